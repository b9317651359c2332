"""Progressive resolution: small, mildly augmented views early in a run, full-size, fully augmented ones late.

Most of what a short run learns early does not need full resolution, and a step on 16 px views costs about a
quarter of one on 32 px views (Kocyigit et al. 2022, "Accelerating Self-Supervised Learning via Efficient
Training Strategies"; FFCV's progressive resizing). Weaker augmentation suits the smaller views (FixRes), so the
colour distortion and the crop's smallest area ramp with the size. Each stage has one fixed view size, so the
steps of a stage keep fixed shapes. The encoder is evaluated at the last stage's size (`--image-size`).

Syntax of `--resolution-schedule`: stages `SIZE@START`, START the fraction of the run's steps where the stage
begins, e.g. `16@0,24@0.4,32@0.8`; the first stage starts at 0.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from torchclr.errors import UserError
from torchclr.transforms.spec import AugmentSpec

OPTION = "--resolution-schedule"
_STAGE = re.compile(r"(\d+)@(\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class ResolutionSchedule:
    """Stages (view size, first fraction of the run); `ramp`: the first stage's augmentation strength relative to
    the last one's (1: the same everywhere)."""

    sizes: tuple[int, ...]
    starts: tuple[float, ...]
    ramp: float = 1.0

    @classmethod
    def parse(cls, text: str, ramp: float = 1.0) -> "ResolutionSchedule":
        stages = [s.strip() for s in str(text).split(",")]
        matches = [_STAGE.fullmatch(s) for s in stages]
        if not all(matches):
            raise UserError(f"{OPTION} must be stages SIZE@START such as 16@0,24@0.4,32@0.8, got {text!r}")
        sizes = tuple(int(m.group(1)) for m in matches if m)
        starts = tuple(float(m.group(2)) for m in matches if m)
        if starts[0] != 0:
            raise UserError(f"{OPTION}: the first stage must start at 0, got {text!r}")
        if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= 1:
            raise UserError(f"{OPTION}: stage starts must increase and stay below 1, got {text!r}")
        if min(sizes) < 8:
            raise UserError(f"{OPTION}: views must be at least 8 px, got {text!r}")
        if not 0 < ramp <= 1:
            raise UserError(f"--augment-ramp must be in (0, 1], got {ramp}")
        return cls(sizes, starts, ramp)

    @property
    def final_size(self) -> int:
        return self.sizes[-1]

    def stage_at(self, step: int, total_steps: int) -> int:
        """The stage of (0-based) step `step` in a run of `total_steps`."""
        stage = 0
        for index, start in enumerate(self.starts):
            if step >= round(start * total_steps):
                stage = index
        return stage

    def step_cost(self, stage: int) -> float:
        """A step's cost relative to the last stage's: convolutions scale with the pixels."""
        return (self.sizes[stage] / self.final_size) ** 2

    def strength(self, stage: int) -> float:
        """Augmentation strength of a stage: `ramp` at the smallest size, 1 at the largest, linear in between."""
        low, high = min(self.sizes), max(self.sizes)
        return 1.0 if high == low else self.ramp + (1 - self.ramp) * (self.sizes[stage] - low) / (high - low)

    def stage_specs(self, spec: AugmentSpec) -> list[AugmentSpec]:
        """One view spec per stage: its size, colour distortion scaled by its strength, and smallest crop area
        moved towards 1 as the strength drops. Blur keeps the final spec's probability."""
        specs = []
        for stage, size in enumerate(self.sizes):
            strength = self.strength(stage)
            low, high = spec.crop_scale
            specs.append(dataclasses.replace(
                spec, image_size=size, jitter_strength=spec.jitter_strength * strength,
                crop_scale=(min(high, low + (1 - low) * (1 - strength)), high), blur_p=spec.effective_blur_p))
        return specs

    def describe(self) -> str:
        parts = [f"{size} px from {start:.0%} (strength {self.strength(i):.2f})"
                 for i, (size, start) in enumerate(zip(self.sizes, self.starts))]
        return "resolution schedule: " + ", ".join(parts)
