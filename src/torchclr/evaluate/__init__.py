"""The evaluation protocols: linear evaluation (SGD) and logistic regression (L-BFGS) on frozen h, weighted kNN,
fine-tuning; `evaluate` runs one on a trained encoder beside random weights (what `torchclr evaluate` does)."""

from torchclr.evaluate.api import Evaluation, evaluate
from torchclr.evaluate.features import eval_images, extract_features
from torchclr.evaluate.finetune import FinetuneSettings
from torchclr.evaluate.knn import accuracy, knn_predict
from torchclr.evaluate.linear import LinearSettings, linear_eval
from torchclr.evaluate.logreg import LinearResult, linear_probe

__all__ = ["Evaluation", "FinetuneSettings", "LinearResult", "LinearSettings", "accuracy", "eval_images", "evaluate",
           "extract_features", "knn_predict", "linear_eval", "linear_probe"]
