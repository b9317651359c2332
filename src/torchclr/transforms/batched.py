"""The fast view family: a whole batch at once, on the batch's own device, with independent parameters per image.

It draws from the same distributions as :func:`torchclr.transforms.view_transform` but needs no Python loop
over images, so it can run in the training process (on the GPU, or next to the model on a small CPU).
The colour ops take float images [N,3,H,W] in [0,1] and one factor per image, and compute what
torchvision.transforms.v2.functional computes for each image with its factor.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from torchclr.transforms.ablation import CUTOUT_SIDE, NOISE_STD, AblationOps, cutout, gaussian_noise, rotate90, sobel
from torchclr.transforms.bands import intensity_jitter
from torchclr.transforms.multicrop import MultiCrop
from torchclr.transforms.spec import AugmentSpec

PerImageOp = Callable[..., Tensor]

_CROP_TRIES = 10  # as torchvision's RandomResizedCrop


def _per_image(values: Tensor) -> Tensor:
    """[N] values shaped to broadcast over [N,C,H,W]."""
    return values.view(-1, 1, 1, 1)


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """Luma [N,1,H,W] with torchvision's ITU-R 601-2 weights and order of operations."""
    red, green, blue = images.unbind(dim=1)
    return red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    """images·f + other·(1−f), clamped to [0,1] as torchvision clamps after every colour op."""
    return torch.lerp(other, images, _per_image(factors)).clamp_(0.0, 1.0)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Scale each image by its factor."""
    return images.mul(_per_image(factors)).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with the mean of its grayscale."""
    return _blend(images, rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with its grayscale."""
    return _blend(images, rgb_to_grayscale(images), factors)


def adjust_hue(images: Tensor, shifts: Tensor) -> Tensor:
    """Rotate each image's hue by its shift (in turns, within [-0.5, 0.5]) in HSV space, as torchvision.

    HSV→RGB uses the closed form channel = V − C·clamp(min(k, 4−k), 0, 1) with k = (n + 6H) mod 6
    and n = 5, 3, 1 for R, G, B: the same numbers as torchvision's sector table without its gather.
    """
    red, green, blue = images.unbind(dim=1)
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    # Hue in sixths of a turn, with torchvision's tie-breaking (red, then green, then blue is the maximum).
    sector_offset = torch.where(
        value == red,
        green - blue,
        torch.where(value == green, blue - red + 2 * chroma, red - green + 4 * chroma),
    )
    sixths = sector_offset.div_(torch.where(chroma > 0, chroma, 1.0)).add_(6 * shifts.view(-1, 1, 1))
    # n = 5, 3, 1 made on the device itself: a torch.tensor of constants would be a copy from the host every call.
    channel_offsets = torch.arange(5.0, 0.0, -2.0, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    k = (sixths.unsqueeze(1) + channel_offsets).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(1) - chroma.unsqueeze(1) * ramp


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Blur each image with its own sigma: torchvision's kernel and reflect padding, as two batched matmuls.

    Matmuls with band matrices beat grouped convolutions on the CPU, and the reflection folds into the matrices.
    """
    height, width = images.shape[-2:]
    across = _blur_matrices(sigmas, kernel_size, width)
    down = across if height == width else _blur_matrices(sigmas, kernel_size, height)
    # Taps sum to 1 only up to rounding: a flat white image would come out a few ulps above 1.
    return (down.unsqueeze(1) @ (images @ across.transpose(1, 2).unsqueeze(1))).clamp_(0.0, 1.0)


def _blur_matrices(sigmas: Tensor, kernel_size: int, size: int) -> Tensor:
    """[N, size, size]: row j holds the taps that make output pixel j, reflected at the borders."""
    half = kernel_size // 2
    limit = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    positions = torch.linspace(-limit, limit, kernel_size, dtype=sigmas.dtype, device=sigmas.device)
    taps = torch.softmax(-(positions / sigmas.view(-1, 1)).square(), dim=1)
    offsets = torch.arange(-half, half + 1, device=sigmas.device)
    sources = (torch.arange(size, device=sigmas.device).view(-1, 1) + offsets).abs()
    sources = torch.where(sources < size, sources, 2 * (size - 1) - sources)
    count = len(sigmas)
    matrices = sigmas.new_zeros(count, size, size)
    return matrices.scatter_add_(2, sources.expand(count, -1, -1), taps.view(count, 1, -1).expand(-1, size, -1))


def solarize(images: Tensor, threshold: float) -> Tensor:
    """Invert the pixels at or above the threshold."""
    return torch.where(images >= threshold, 1.0 - images, images)


def sample_crop_boxes(
    count: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boxes [count, 4] (left, top, right, bottom) in pixels, drawn as torchvision's RandomResizedCrop draws them.

    `height` and `width` are the image's, or one per box (tensors [count] on `device`: each box is drawn for its
    own image). Each box takes the first of 10 tries (area uniform in scale·H·W, log-uniform aspect ratio) that
    fits in its image, and the central crop when none does. Everything is drawn on `device`.
    """
    heights, widths = (_per_box(value, count, device) for value in (height, width))

    def tries(low: float, high: float) -> Tensor:
        draws = torch.empty(count, _CROP_TRIES, dtype=torch.float32, device=device)
        return draws.uniform_(low, high, generator=generator)

    areas = tries(*scale).mul_((heights * widths).unsqueeze(1))
    aspects = tries(math.log(ratio[0]), math.log(ratio[1])).exp_()
    try_widths = (areas * aspects).sqrt_().round_()
    try_heights = (areas / aspects).sqrt_().round_()
    fits = (try_widths > 0) & (try_widths <= widths[:, None]) & (try_heights > 0) & (try_heights <= heights[:, None])
    first_fit = fits.int().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    fallback_width, fallback_height = _central_crop_size(heights, widths, ratio)
    crop_width = torch.where(found, try_widths.gather(1, first_fit).squeeze(1), fallback_width)
    crop_height = torch.where(found, try_heights.gather(1, first_fit).squeeze(1), fallback_height)
    left = _random_offset(widths - crop_width, found, generator)
    top = _random_offset(heights - crop_height, found, generator)
    return torch.stack((left, top, left + crop_width, top + crop_height), dim=1)


def _per_box(value: int | Tensor, count: int, device: torch.device | str) -> Tensor:
    """float32 [count] from one size for all boxes (filled on the device, no copy from the host) or one per box."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=torch.float32)
    return torch.full((count,), float(value), dtype=torch.float32, device=device)


def _central_crop_size(heights: Tensor, widths: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """RandomResizedCrop's fallback: the whole image, trimmed to the nearest allowed aspect ratio."""
    in_ratio = widths / heights
    too_tall, too_wide = in_ratio < ratio[0], in_ratio > ratio[1]
    crop_width = torch.where(too_wide, (heights * ratio[1]).round(), widths)
    crop_height = torch.where(too_tall, (widths / ratio[0]).round(), heights)
    return crop_width, crop_height


def _random_offset(slack: Tensor, is_random: Tensor, generator: torch.Generator | None) -> Tensor:
    """A uniform integer in [0, slack] where is_random, the centred slack // 2 elsewhere."""
    uniform = torch.rand(slack.shape, dtype=slack.dtype, device=slack.device, generator=generator)
    drawn = torch.minimum((uniform * (slack + 1)).floor_(), slack)  # rounding may reach slack + 1
    return torch.where(is_random, drawn, torch.div(slack, 2, rounding_mode="floor"))


def replicate_last_valid_row_and_column(pixels: Tensor, sizes: Tensor) -> Tensor:
    """Copy each image's last valid row and column over the first padding row and column, in place.

    Bilinear samples near a crop's bottom or right edge read one pixel beyond it; at the image's own edge that
    must be the edge again (as torchvision's resize clamps), never the padding. Where an image fills the tensor
    the copy writes its edge onto itself. Index tensors, no selection: the device never waits for the host.
    """
    batch, _, height, width = pixels.shape
    images = torch.arange(batch, device=pixels.device)
    valid_height, valid_width = sizes[:, 0].long(), sizes[:, 1].long()
    rows_to, cols_to = valid_height.clamp(max=height - 1), valid_width.clamp(max=width - 1)
    pixels[images, :, rows_to, :] = pixels[images, :, valid_height - 1, :]
    pixels[images, :, :, cols_to] = pixels[images, :, :, valid_width - 1]
    return pixels


def _flip(images: Tensor) -> Tensor:
    return images.flip(-1)


def _grayscale_rgb(images: Tensor) -> Tensor:
    return rgb_to_grayscale(images).expand_as(images)


def _sobel_rgb(images: Tensor) -> Tensor:
    return sobel(rgb_to_grayscale(images)).expand_as(images)


def _apply_where(images: Tensor, chosen: Tensor, op: PerImageOp, *per_image: Tensor, masked: bool) -> Tensor:
    """op(images, *per_image) for the chosen images, the images themselves for the others.

    `masked`: every image is computed and the choice is a mask, not a selection: no `nonzero`, so a GPU never
    waits for the host to learn how many were chosen (and the step can be captured in a CUDA graph). Otherwise the
    chosen images are selected and replaced in place: on a CPU, where a selection costs no wait, the others then
    cost nothing (a masked colour jitter is ~4x the work of a selected one).
    """
    if masked:
        return torch.where(_per_image(chosen), op(images, *per_image), images)
    index = chosen.nonzero().squeeze(1)
    if index.numel() > 0:
        selected = (values.index_select(0, index) for values in per_image)
        images.index_copy_(0, index, op(images.index_select(0, index), *selected))
    return images


JITTER_OPS: dict[str, PerImageOp] = {
    "brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation, "hue": adjust_hue,
}


class BatchAugment(nn.Module):
    """SimCLR views of a batch [B,3,H,W] (uint8, or float in [0,1]) as float32 [B,3,S,S] in [0,1]; with
    `spec.channels` C other than 3, of [B,C,H,W], with a per-band intensity jitter for the colour ops (`ops`).

    Every image gets its own crop, flip, jitter factors and order, grayscale, blur sigma and solarize draws;
    all random numbers come from `generator` (or the default one) on the batch's device. A batch of images of
    different shapes comes padded (top-left aligned) with `sizes` [B,2], each image's valid (height, width):
    every crop is then drawn inside its own image, at its own aspect ratio, and the padding never reaches a view.

    `sync_free`: apply each op through masks, so that no op makes the device wait for the host (what a GPU step
    needs); else select the images each op is drawn for (cheaper where a selection costs no wait). The default,
    None, is masks on a GPU and selection elsewhere. Both draw the same random numbers and give the same views.
    """

    def __init__(self, spec: AugmentSpec, sync_free: bool | None = None, *, ablation: AblationOps | None = None) -> None:
        super().__init__()
        self.spec, self.sync_free, self.ablation = spec, sync_free, ablation or AblationOps()
        amplitudes = dict(zip(("brightness", "contrast", "saturation"), spec.jitter[:3]))
        # (op, the factor range, the factor that leaves an image as it is)
        self._jitter_ops: list[tuple[str, float, float, float]] = [
            (name, max(0.0, 1.0 - amplitude), 1.0 + amplitude, 1.0) for name, amplitude in amplitudes.items() if amplitude > 0
        ]
        if spec.jitter[3] > 0:
            self._jitter_ops.append(("hue", -spec.jitter[3], spec.jitter[3], 0.0))
        # other channel counts: no colour ops, but brightness and contrast factors per band (transforms.bands)
        bands = not spec.colour and any(spec.jitter[:2])
        self._band_ranges = [(max(0.0, 1.0 - amplitude), 1.0 + amplitude) for amplitude in spec.jitter[:2]] if bands else []
        if not spec.colour:
            self._jitter_ops = []

    def extra_repr(self) -> str:
        return repr(self.spec)

    @property
    def ops(self) -> tuple[str, ...]:
        """The ops a view may get, in order (ops of probability 0 left out): what the views of this spec are."""
        spec, extra = self.spec, self.ablation
        jitter = spec.jitter_p > 0 and bool(self._jitter_ops or self._band_ranges)
        drawn = [("crop" if spec.crop else "resize", True), ("flip", spec.flip_p > 0),
                 ("colour jitter" if spec.colour else "band intensity jitter", jitter),
                 ("grayscale", spec.colour and spec.grayscale_p > 0), ("blur", spec.effective_blur_p > 0),
                 ("cutout", extra.cutout_p > 0), ("sobel", extra.sobel_p > 0), ("noise", extra.noise_p > 0),
                 ("rotate", extra.rotate_p > 0), ("solarize", spec.solarize_p > 0)]
        return tuple(name for name, used in drawn if used)

    def set_step(self, step: int, total_steps: int | None) -> None:
        """One stage: every step draws the same family of views (see `StagedAugment` for several)."""

    def forward(self, images: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None) -> Tensor:
        return self._augment(images, 1, generator, sizes)

    def two_views(self, images: Tensor, generator: torch.Generator | None = None,
                  sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Two independent views of every image, drawn in one pass over a batch of 2B."""
        first, second = self._augment(images, 2, generator, sizes).chunk(2)
        return first, second

    def many_views(self, images: Tensor, count: int, generator: torch.Generator | None = None,
                   sizes: Tensor | None = None) -> Tensor:
        """`count` independent views of every image, view-major [count·B,3,S,S], drawn in one pass (multi-crop)."""
        return self._augment(images, count, generator, sizes)

    def draw(self, images: Tensor, generator: torch.Generator | None = None,
             sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        """What a loader yields per step: the two views (see `MultiCropAugment.draw` for more)."""
        return self.two_views(images, generator, sizes)

    def _augment(self, images: Tensor, views: int, generator: torch.Generator | None, sizes: Tensor | None) -> Tensor:
        out = self._crop(images, views, generator, sizes)
        if self.ablation.one_branch and views == 2:  # figure 5's protocol: the second view is the crop alone
            first, second = out.chunk(2)
            return torch.cat((self._distort(first, generator), second))
        return self._distort(out, generator)

    def _distort(self, out: Tensor, generator: torch.Generator | None) -> Tensor:
        """Everything after the crop, each op drawn per image, in the paper's order, the ablation's ops before solarize."""
        spec, extra = self.spec, self.ablation
        count = len(out)
        masked = self.sync_free if self.sync_free is not None else out.device.type == "cuda"
        apply_where = partial(_apply_where, masked=masked)

        def drawn(probability: float) -> Tensor:
            return torch.rand(count, device=out.device, generator=generator) < probability

        def uniform(low: float, high: float) -> Tensor:
            return out.new_empty(count).uniform_(low, high, generator=generator)

        if spec.flip_p > 0:
            out = apply_where(out, drawn(spec.flip_p), _flip)
        if spec.jitter_p > 0 and self._jitter_ops:
            applied = drawn(spec.jitter_p)
            factors = torch.stack([uniform(low, high) for _, low, high, _ in self._jitter_ops], dim=1)
            order = torch.rand(count, len(self._jitter_ops), device=out.device, generator=generator).argsort(dim=1)
            out = self.jitter(out, applied, factors, order, masked)
        if spec.jitter_p > 0 and self._band_ranges:
            applied = drawn(spec.jitter_p)
            brightness, contrast = (out.new_empty(count, spec.channels).uniform_(low, high, generator=generator)
                                    for low, high in self._band_ranges)
            out = intensity_jitter(out, applied, brightness, contrast, drawn(0.5))
        if spec.grayscale_p > 0 and spec.colour:
            out = apply_where(out, drawn(spec.grayscale_p), _grayscale_rgb)
        if spec.effective_blur_p > 0:
            blur = partial(gaussian_blur, kernel_size=spec.blur_kernel_size)
            out = apply_where(out, drawn(spec.effective_blur_p), blur, uniform(*spec.blur_sigma))
        if extra.cutout_p > 0:
            side = out.shape[-1]
            sides, centres = uniform(*CUTOUT_SIDE).mul_(side), out.new_empty(count, 2).uniform_(0, side, generator=generator)
            out = apply_where(out, drawn(extra.cutout_p), cutout, sides, centres)
        if extra.sobel_p > 0:
            out = apply_where(out, drawn(extra.sobel_p), _sobel_rgb)
        if extra.noise_p > 0:
            noise = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=generator)
            out = apply_where(out, drawn(extra.noise_p), gaussian_noise, uniform(*NOISE_STD), noise)
        if extra.rotate_p > 0:
            turns = torch.randint(1, 4, (count,), device=out.device, generator=generator)
            out = apply_where(out, drawn(extra.rotate_p), rotate90, turns)
        if spec.solarize_p > 0:
            out = apply_where(out, drawn(spec.solarize_p), partial(solarize, threshold=spec.solarize_threshold))
        return out

    def jitter(self, images: Tensor, applied: Tensor, factors: Tensor, order: Tensor, masked: bool) -> Tensor:
        """Colour jitter of the `applied` images: op order[i, p] at step p, with factor factors[i, op].

        `masked`: each step runs every op on every image, with the factor that leaves an image unchanged (1, or a
        hue shift of 0) wherever the op is not this image's op at this step: the ops stay exact and nothing is
        selected. Otherwise each op runs on the images it is chosen for (see `_apply_where`).
        """
        for position in range(order.shape[1]):
            current = order[:, position]
            for index, (name, _, _, identity) in enumerate(self._jitter_ops):
                chosen = applied & (current == index)
                if name == "hue" or not masked:  # a zero hue shift is the identity only up to rounding
                    images = _apply_where(images, chosen, JITTER_OPS[name], factors[:, index], masked=masked)
                else:
                    images = JITTER_OPS[name](images, torch.where(chosen, factors[:, index], identity))
        return images

    def _crop(self, images: Tensor, views: int, generator: torch.Generator | None, sizes: Tensor | None) -> Tensor:
        """views random crops of every image, resized to S×S, as a new float32 tensor [views·B,3,S,S] in [0,1]."""
        if images.ndim != 4 or images.shape[1] != self.spec.channels:
            raise ValueError(f"expected a batch of {self.spec.channels}-channel images [B,{self.spec.channels},H,W], "
                             f"got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"expected uint8 or float images, got {images.dtype}")
        if sizes is not None and tuple(sizes.shape) != (len(images), 2):
            raise ValueError(f"expected sizes [B,2] for {len(images)} images, got shape {tuple(sizes.shape)}")
        batch, _, height, width = images.shape
        size = self.spec.image_size
        pixels = images.to(torch.float32, copy=sizes is not None)  # the edge copy below must not touch the caller's
        if sizes is not None:
            pixels = replicate_last_valid_row_and_column(pixels, sizes)
        if self.spec.crop or sizes is not None:
            count = views * batch
            source = torch.arange(count, device=images.device).remainder_(batch)
            heights, widths = (height, width) if sizes is None else sizes[source].to(torch.float32).unbind(dim=1)
            if self.spec.crop:
                boxes = sample_crop_boxes(
                    count, heights, widths, self.spec.crop_scale, self.spec.crop_ratio, images.device, generator
                )
            else:  # each image's valid region, whole
                zeros = torch.zeros(count, device=images.device)
                boxes = torch.stack((zeros, zeros, widths, heights), dim=1)
            # Adaptive sampling averages ceil(crop/size)² bilinear samples per output pixel: a box filter
            # against aliasing where the crop is larger than the view (RandomResizedCrop uses a triangle).
            out = roi_align(pixels, torch.cat((source[:, None].to(boxes.dtype), boxes), dim=1), size, 1.0, -1, True)
        else:
            if (height, width) != (size, size):
                pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out = pixels.repeat(views, 1, 1, 1)  # a copy, so that the in-place ops never touch the caller's tensor
        return out.mul_(1.0 / 255) if images.dtype == torch.uint8 else out  # the very scaling of v2.ToDtype


class StagedAugment(nn.Module):
    """A `BatchAugment` per resolution stage (see `torchclr.transforms.resolution`), one of them in use at a time.

    The training loop calls `set_step` before each batch is drawn; the stage is a function of the step and the
    run's length alone, so a resumed run draws the same views with the same generator as one never stopped. A
    stage, once reached, is kept: a --time-budget run that re-plans a longer run does not go back to smaller views.
    """

    def __init__(self, specs: list[AugmentSpec], stage_at: Callable[[int, int], int], *,
                 ablation: AblationOps | None = None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(BatchAugment(spec, ablation=ablation) for spec in specs)
        self.stage_at, self.current = stage_at, 0

    def set_step(self, step: int, total_steps: int | None) -> None:
        """The stage of `step` in a run of `total_steps` (None, a time budget not yet planned: the stage so far)."""
        if total_steps is not None:
            self.current = max(self.current, self.stage_at(step, total_steps))

    @property
    def spec(self) -> AugmentSpec:
        return self.stages[self.current].spec

    def forward(self, images: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None) -> Tensor:
        return self.stages[self.current](images, generator, sizes)

    def two_views(self, images: Tensor, generator: torch.Generator | None = None,
                  sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.stages[self.current].two_views(images, generator, sizes)

    def draw(self, images: Tensor, generator: torch.Generator | None = None,
             sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        return self.two_views(images, generator, sizes)


class MultiCropAugment(nn.Module):
    """Multi-crop views (see `torchclr.transforms.multicrop`): a `BatchAugment` per view group, each drawing its
    group's views of the batch in one pass at its size and crop scale, one generator for all groups."""

    def __init__(self, spec: AugmentSpec, views: MultiCrop) -> None:
        super().__init__()
        self.groups = nn.ModuleList(BatchAugment(group_spec) for group_spec in views.specs(spec))
        self.counts = [group.count for group in views.groups]

    @property
    def spec(self) -> AugmentSpec:
        """The large views' augmentation (the encoder's input size)."""
        return self.groups[0].spec

    def set_step(self, step: int, total_steps: int | None) -> None:
        """Every step draws the same groups (--views and --resolution-schedule exclude each other)."""

    def draw(self, images: Tensor, generator: torch.Generator | None = None,
             sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        """One view-major tensor [count·B,3,S,S] per group, largest views first: together the views of z's layout."""
        return tuple(group.many_views(images, count, generator, sizes) for group, count in zip(self.groups, self.counts))
