"""Multi-crop views (Caron et al. 2020, SwAV section 3.2): more than two views per image, a few large ones and
several small ones, which cost in proportion to their pixels (a 24 px view about a quarter of a 48 px one).

Syntax of `--views`: groups COUNTxSIZE separated by commas, each optionally with its own crop scale
COUNTxSIZE@LOW-HIGH, e.g. `2x48,6x24` or `2x48@0.2-1,4x24@0.05-0.2`. The groups at the largest size are the large
views (the encoder is evaluated at that size, --image-size); the others are small. Crop scales are fractions of the
whole image's area, drawn with the same whole-image crop law as two-view runs. Without an explicit scale, a spec with
small views takes SwAV's split, large views (0.14, 1) and small ones (0.05, 0.14); a spec with large views only takes
--crop-scale. Each group's views are made in one pass of the batched augmentation at its size, and the training
step runs the encoder once per size (as SwAV does).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from torchclr.errors import UserError
from torchclr.transforms.spec import AugmentSpec

OPTION = "--views"
LARGE_SCALE = (0.14, 1.0)  # SwAV's split of the crop area between large and small views
SMALL_SCALE = (0.05, 0.14)
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_GROUP = re.compile(rf"(\d+)x(\d+)(?:@{_NUMBER}-{_NUMBER})?")


@dataclass(frozen=True)
class ViewGroup:
    """`count` views of every image at `size` px, crops of `scale` (area fractions) of the whole image."""

    count: int
    size: int
    scale: tuple[float, float]


@dataclass(frozen=True)
class MultiCrop:
    """The view groups of a multi-crop run, largest size first (the order of the views in z: the large views lead)."""

    groups: tuple[ViewGroup, ...]

    @classmethod
    def parse(cls, text: str, crop_scale: tuple[float, float]) -> "MultiCrop":
        """Parse `--views`; `crop_scale` (--crop-scale) is the large views' default when there are no small ones."""
        items = [item.strip() for item in str(text).split(",")]
        matches = [_GROUP.fullmatch(item) for item in items]
        if not all(matches):
            raise UserError(f"{OPTION} must be groups COUNTxSIZE[@LOW-HIGH] separated by commas, such as 2x48,6x24 "
                            f"or 2x48,4x24@0.05-0.2, got {text!r}")
        parsed = [(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)) for m in matches if m]
        for count, size, _, _ in parsed:
            if count < 1:
                raise UserError(f"{OPTION} {text}: every group needs at least 1 view, got {count}x{size}")
            if size < 8:
                raise UserError(f"{OPTION} {text}: views must be at least 8 px, got {count}x{size}")
        largest = max(size for _, size, _, _ in parsed)
        has_small = any(size < largest for _, size, _, _ in parsed)
        groups = []
        for count, size, low, high in parsed:
            if low is not None:
                scale = (float(low), float(high))
                if not 0 < scale[0] <= scale[1] <= 1:
                    raise UserError(f"{OPTION} {text}: a crop scale LOW-HIGH must satisfy 0 < LOW <= HIGH <= 1, "
                                    f"got {low}-{high}")
            elif not has_small:
                scale = tuple(crop_scale)
            else:
                scale = LARGE_SCALE if size == largest else SMALL_SCALE
            groups.append(ViewGroup(count, size, scale))
        views = cls(tuple(sorted(groups, key=lambda group: -group.size)))  # stable: equal sizes keep their order
        if views.views < 2:
            raise UserError(f"{OPTION} {text} gives 1 view per image: a contrastive loss needs at least 2 "
                            "(a single view has no positive)")
        return views

    @property
    def views(self) -> int:
        """Views per image, all groups together."""
        return sum(group.count for group in self.groups)

    @property
    def large_size(self) -> int:
        return self.groups[0].size

    @property
    def large_views(self) -> int:
        """Views at the largest size: the anchors of `--view-anchors large`, the leading views of z."""
        return sum(group.count for group in self.groups if group.size == self.large_size)

    @property
    def pixels(self) -> int:
        """Pixels of one image's views, all groups together (what a step's cost grows with)."""
        return sum(group.count * group.size**2 for group in self.groups)

    def is_pair(self, image_size: int, crop_scale: tuple[float, float]) -> bool:
        """Whether these are SimCLR's two views at --image-size and --crop-scale: the plain two-view path then runs."""
        return self.groups == (ViewGroup(2, image_size, tuple(crop_scale)),)

    def specs(self, base: AugmentSpec) -> list[AugmentSpec]:
        """One augmentation per group: the run's, at the group's size and crop scale."""
        return [dataclasses.replace(base, image_size=group.size, crop_scale=group.scale) for group in self.groups]

    def describe(self) -> str:
        return ", ".join(f"{g.count} x {g.size} px (crop scale {g.scale[0]:g}-{g.scale[1]:g})" for g in self.groups)
