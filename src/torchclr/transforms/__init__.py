"""SimCLR's random views: the per-image reference on torchvision.transforms.v2 and the batched fast path."""

from torchclr.transforms.batched import BatchAugment
from torchclr.transforms.spec import AugmentSpec
from torchclr.transforms.views import TwoViews, eval_transform, view_transform

__all__ = ["AugmentSpec", "BatchAugment", "TwoViews", "eval_transform", "view_transform"]
