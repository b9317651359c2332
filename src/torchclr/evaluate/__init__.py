"""Standard protocols on frozen h: linear probe and weighted kNN."""

from torchclr.evaluate.features import eval_images, extract_features
from torchclr.evaluate.knn import accuracy, knn_predict
from torchclr.evaluate.linear import LinearResult, linear_probe

__all__ = ["LinearResult", "accuracy", "eval_images", "extract_features", "knn_predict", "linear_probe"]
