"""Standard protocols on frozen h: linear evaluation (SGD), logistic regression (L-BFGS) and weighted kNN."""

from torchclr.evaluate.features import eval_images, extract_features
from torchclr.evaluate.knn import accuracy, knn_predict
from torchclr.evaluate.linear import LinearSettings, linear_eval
from torchclr.evaluate.logreg import LinearResult, linear_probe

__all__ = ["LinearResult", "LinearSettings", "accuracy", "eval_images", "extract_features", "knn_predict", "linear_eval",
           "linear_probe"]
