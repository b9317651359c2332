"""Pretraining settings: one dataclass whose fields are at once the YAML keys and the command-line options.

Precedence: the defaults below < a preset or YAML file (`--config`) < options on the command line.
The defaults are a short CPU-friendly run on the shipped CIFAR-10 sample; the presets `cifar10` and
`imagenet` carry the paper's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from torchclr.budget import parse_duration
from torchclr.data.skips import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_IMAGE_PIXELS, ReadPolicy
from torchclr.errors import UserError
from torchclr.health import KEEP_BEST_HIGHER
from torchclr.transforms.multicrop import MultiCrop
from torchclr.transforms.resolution import ResolutionSchedule
from torchclr.transforms.spec import AugmentSpec, check_augment

PRESETS = ("quickstart", "cifar10", "imagenet", "cpu-budget", "cifar10-gpu")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


def _section_from_spec(name: str, spec: type, exclude: tuple[str, ...]) -> type:
    """A config section with the spec's option fields (those with a help text), their defaults and help, so that
    the options are declared once, where the code that uses them is."""
    fields = [(f.name, f.type, field(default=f.default, metadata={"choices": None, **f.metadata}))
              for f in dataclasses.fields(spec) if f.name not in exclude and "help" in f.metadata]
    return dataclasses.make_dataclass(name, fields)


@dataclass
class ModelOptions:
    """Encoder f and projection head g (paper sections 2.1 and 4.2)."""

    arch: str = _opt("resnet18", "encoder: a torchvision classification model (resnet50, mobilenet_v3_small, "
                     "convnext_tiny, vit_b_16, ...) or timm:NAME (needs the timm extra)")
    cifar_stem: bool | None = _opt(None, "3x3 stride-1 stem without max-pool (ResNets only); default: on for ResNets on images up to 64 px")
    zero_init_residual: bool = _opt(False, "start the last BatchNorm of every residual block at scale 0, so that each block "
                                    "starts as the identity (the official SimCLR code's option; ResNets only)")
    init: str | None = _opt(None, "start the encoder from these weights instead of random ones: 'imagenet' (torchvision's "
                            "default weights for --arch, from the torch hub cache), 'timm' (timm's pretrained weights "
                            "for --arch timm:NAME, its tag if it has one, from the Hugging Face hub cache; --download "
                            "fetches either) or a state dict / safetensors file (torchvision or timm keys, or torchclr's "
                            "encoder./model.encoder. keys)")
    head: str = _opt("mlp", "projection head", ("none", "linear", "mlp"))
    head_layers: int = _opt(2, "layers of the mlp head")
    head_shift: bool = _opt(False, "let the head's last BatchNorm learn a shift, as torchclr 0.2 did (to resume its runs "
                            "exactly); the official SimCLR code and the default have none (center=False)")
    proj_dim: int = _opt(128, "output size of the projection head (z)")


@dataclass
class LossOptions:
    """The contrastive loss (paper section 2.1, tables 4 and 5)."""

    loss: str = _opt("nt_xent", "contrastive loss", ("nt_xent", "nt_logistic", "margin_triplet"))
    temperature: float = _opt(0.5, "temperature tau of the loss")
    margin: float = _opt(1.0, "margin of the margin_triplet loss")
    view_anchors: str = _opt("all", "with --views: the anchors of the multi-positive NT-Xent: 'all' views (SupCon's "
                             "L_out) or only the 'large' ones (SwAV computes its codes from the large crops only); "
                             "every view is a positive and a negative either way", ("all", "large"))
    semi_hard: bool = _opt(False, "nt_logistic and margin_triplet: one negative per anchor, the most similar one that is "
                           "less similar than its positive (semi-hard mining after Schroff et al., the paper's "
                           "section 5.1 and table 4)")
    l2_normalize: bool = _opt(True, "compare z by cosine similarity (off: by dot product, the paper's table 5 ablation)")


@dataclass
class OptimOptions:
    """LARS, the learning rate's scaling with the batch and its warm-up + cosine schedule (sections 2.2, 2.3, B.1)."""

    optimizer: str = _opt("lars", "optimizer", ("lars", "sgd", "adamw"))
    lr: float = _opt(1.0, "base learning rate, scaled by --lr-scaling from the global batch size")
    lr_scaling: str = _opt("linear", "'linear': lr x batch/256; 'sqrt': lr x sqrt(batch); 'none'", ("linear", "sqrt", "none"))
    weight_decay: float = _opt(1e-6, "weight decay (never on biases and BN parameters)")
    momentum: float = _opt(0.9, "momentum of lars/sgd")
    batch_size: int = _opt(256, "images per step over all processes (each gives 2 views)")
    epochs: int = _opt(100, "passes over the training data (ignored with --time-budget)")
    time_budget: str | None = _opt(None, "train for this long instead of --epochs (15m, 2h, 90s or seconds): the run times "
                                   "its steps and fits their number, and the lr schedule, to the budget; epoch-end "
                                   "checkpoints and kNN monitors count, the setup before and the final report after do not")
    warmup_epochs: float = _opt(10, "epochs of linear learning-rate warm-up before the cosine decay")


AugmentOptions = _section_from_spec("AugmentOptions", AugmentSpec, exclude=("image_size",))
AugmentOptions.__doc__ = "SimCLR's random views (paper section 3 and appendix A), declared in torchclr.transforms.spec."


@dataclass
class DataOptions:
    """What to train on, the view size, and how images become batches of views."""

    data: str = _opt("sample", "images to pretrain on: a folder (class sub-folders optional), a .zip of one, "
                     "cifar10:DIR, cifar100:DIR, stl10:DIR, or 'sample' (the CIFAR-10 sample shipped with torchclr)")
    in_channels: int = _opt(3, "channels of every image: 3 converts any image to RGB; 1 (grayscale) or another count "
                            "takes files with exactly that many bands: one-band images, multi-page TIFFs (a band a page), "
                            ".npy arrays [C,H,W] or [H,W,C], 8- or 16-bit (scaled to [0,1] by 255 or 65535); files of "
                            "another count are skipped. Colour jitter and grayscale apply to 3 channels only, other "
                            "counts get a brightness/contrast jitter per band (docs/data.md)")
    value_range: tuple[float, float] | None = _opt(
        None, "LOW,HIGH: pixel values of images deeper than 8 bits (16-bit, 32-bit, float) mapped onto [0, 1], clipped "
        "outside, e.g. 0,4095 for 12-bit microscopy in 16-bit files, which would otherwise keep 17 of the 256 levels "
        "torchclr stores; default: the type's full range (16-bit: 0..65535; floats: 0..1, or each image's own "
        "min..max when outside it). 8-bit images are taken as they are")
    train_split: str = _opt("train", "split of --data to pretrain on (a sub-folder name; for stl10 e.g. 'train+unlabeled')")
    eval_data: str | None = _opt(None, "labelled data with train/test splits for the kNN monitor; default: --data when it has them")
    eval_split: str = _opt("test", "split of the labelled data to report accuracy on (e.g. 'val' for ImageNet)")
    image_size: int | None = _opt(None, "side of the square views fed to the encoder, in pixels; default: from the data "
                                  "(32 for images of 64 px or less, 96 up to 160 px, 224 above)")
    resolution_schedule: str | None = _opt(None, "progressive resolution: stages SIZE@START (START: fraction of the run's "
                                           "steps), e.g. 16@0,24@0.4,32@0.8; the last size is --image-size, at which "
                                           "the encoder is evaluated (--augment-mode batched)")
    augment_ramp: float = _opt(1.0, "with --resolution-schedule: augmentation strength of the smallest stage relative to "
                               "the largest (colour distortion x ramp, smallest crop area towards 1), linear in the size; 1: no ramp")
    views: str | None = _opt(None, "multi-crop (SwAV, Caron et al. 2020): the views of each image as groups "
                             "COUNTxSIZE[@LOW-HIGH], e.g. 2x48,6x24; the largest size is --image-size, smaller groups "
                             "are small views, each group made in one pass of the batched augmentation and run through "
                             "the encoder once per size; crop scales (area fractions of the whole image) default to "
                             "SwAV's split, large (0.14, 1) and small (0.05, 0.14), or to --crop-scale when all views "
                             "are large; every view of an image is a positive of every other (--augment-mode batched); "
                             "default: two views at --image-size")
    augment_mode: str = _opt("batched", "'batched': decode once, augment whole batches on the training device (fast); "
                             "'per-image': torchvision v2 per image in DataLoader workers (the reference)", ("batched", "per-image"))
    cache_dir: str | None = _opt(None, "folder for the decoded-image cache (memory-mapped, keyed by the data's content); default: memory only")
    stored_size: int | None = _opt(None, "--augment-mode batched: side (px) that each image's longer side is stored at; the "
                                   "random crops are drawn from the whole stored image. Costs 3 x side^2 bytes per image; "
                                   "default: --image-size / sqrt(smallest crop scale), rounded up to 8 (120 at 32 px, 792 at 224)")
    data_mode: str = _opt("auto", "--augment-mode batched: 'memory' decodes the whole set into RAM once (fastest), 'stream' "
                          "decodes each batch in DataLoader workers (sets that do not fit), 'auto' streams when the decoded "
                          "set would take more than 25%% of the available memory", ("auto", "memory", "stream"))
    decode: str = _opt("auto", "--data-mode stream: where JPEGs are decoded: 'workers' (PIL, draft mode for large ones), "
                       "'device' (read in workers, decoded in batches on the training device: nvJPEG on a GPU), 'auto' "
                       "(device on a GPU, else workers)", ("auto", "workers", "device"))
    download: bool = _opt(False, "let torchvision download cifar10/cifar100/stl10, and --init imagenet / timm fetch their "
                          "weights (needs a network)")
    workers: int | None = _opt(None, "DataLoader worker processes for --augment-mode per-image and --data-mode stream; default: from the core count")
    strict: bool = _opt(False, "stop at the first bad image file (unreadable, corrupt, too large, not a regular file) "
                        "instead of skipping it; skipped files are listed in skipped_files.csv in the run folder")
    max_image_pixels: int = _opt(DEFAULT_MAX_IMAGE_PIXELS, "images with more pixels are skipped as decompression bombs")
    max_file_mb: int = _opt(DEFAULT_MAX_FILE_MB, "image files (or zip members) larger than this many MiB are skipped unread")


@dataclass
class RuntimeOptions:
    """Device, precision, seeding, memory, and several processes under torchrun."""

    device: str = _opt("auto", "'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    precision: str = _opt("auto", "autocast precision: 'auto' is bf16 on a GPU and on CPUs that do bf16 natively "
                          "(AVX-512 BF16, AMX), else fp32 (emulated bf16 is many times slower); fp16 uses a grad scaler "
                          "(GPU only)", ("auto", "bf16", "fp16", "fp32"))
    compile: bool = _opt(False, "torch.compile the model (slower start, faster steps)")
    channels_last: bool = _opt(True, "channels-last memory format for the convolutions")
    seed: int = _opt(0, "random seed")
    deterministic: bool = _opt(False, "deterministic algorithms (bit-exact resume, slower)")
    grad_cache_chunk: str | None = _opt("auto", "gradient caching: run the network on chunks of this many images per process, "
                                 "the loss still over the whole batch, with the memory of one chunk (slower: each chunk "
                                 "runs forward twice). The gradient is the whole batch's exactly, except that BatchNorm "
                                 "normalises each chunk by its own statistics; a chunk holds view 1 of one group of "
                                 "images and view 2 of the next, never both views of an image; 'auto': the memory plan made before the "
                                 "first step turns it on, with the largest chunk that fits, when the batch does not fit; 'off' (or none)")
    sync_bn: bool = _opt(True, "under torchrun, BatchNorm statistics over the global batch (off: over each process's share)")
    dist_timeout: float = _opt(1800.0, "under torchrun, seconds a process waits for the others before it stops with an "
                               "error (a dead or stalled process); must exceed the time rank 0 takes to write a checkpoint")


@dataclass
class OutputOptions:
    """The run folder, checkpoints, monitoring and the final report."""

    out_dir: str = _opt("runs/simclr", "run folder: config, metrics.jsonl, loss curve, TensorBoard logs, checkpoints")
    overwrite: bool = _opt(False, "start afresh in an --out-dir that holds another run, removing that run's files first "
                           "(without it, such a folder is refused unless --resume continues it)")
    resume_other_data: bool = _opt(False, "with --resume, continue on --data that is not the data the checkpoint was "
                                   "trained on (other images, or the same in another order); without it, such a resume "
                                   "is refused")
    keep_checkpoints: int = _opt(2, "checkpoints to keep (older ones are deleted; 0 keeps all)")
    save_every_steps: int = _opt(0, "also save a checkpoint every this many steps, mid-epoch (0: at epoch ends only); "
                                 "SIGTERM and SIGUSR1 always save one at the current step")
    skip_nonfinite_steps: bool = _opt(False, "skip (and count) a step whose loss or gradients are not finite instead of "
                                      "stopping the run; costs one device-to-host sync per step")
    knn_every: int | None = _opt(None, "run the kNN monitor every this many epochs (0: never); default: 1, or 10 when "
                                 "the labelled data is too large to hold in memory")
    knn_bank_size: int = _opt(50_000, "labelled training images (a seeded subset, or all if fewer) the kNN monitor compares against")
    knn_k: int = _opt(200, "neighbours of the kNN monitor")
    knn_temperature: float = _opt(0.1, "temperature of the kNN monitor's weights")
    health_every: int = _opt(1, "measure the label-free health of the representation (alignment, uniformity, rank of h, "
                             "std of z and h, view retrieval; docs/health.md) every this many epochs on a fixed slice "
                             "of 512 training images (0: never)")
    stop_on_collapse: bool = _opt(False, "end the run when the health metrics show a collapse, keeping the last healthy "
                                  "checkpoint (its weights become encoder.safetensors)")
    keep_best: str | None = _opt(None, "keep the checkpoint of the best epoch as best.safetensors in the run folder, by this "
                                 "metric: view_top1, rank_h, std_h, std_z, uniformity (label-free) or knn_top1 (labelled data)")
    final_protocol: str = _opt("logreg", "evaluation of the final report against random weights (linear_eval.json): "
                               "'logreg', L-BFGS on cached h (the paper's transfer protocol, one pass of the encoder), or "
                               "'linear', the paper's SGD linear evaluation on random crops (many passes; see torchclr "
                               "evaluate --protocol)", ("logreg", "linear"))
    final_report: bool = _opt(True, "end with the --final-protocol evaluation of the encoder beside random weights (with labelled data)")
    progress: bool = _opt(True, "show a progress bar")


# (title of the --help group, section): the paper's settings first.
SECTIONS: tuple[tuple[str, type], ...] = (
    ("augmentation", AugmentOptions), ("model", ModelOptions), ("loss", LossOptions), ("optimisation", OptimOptions),
    ("data", DataOptions), ("runtime", RuntimeOptions), ("output and monitoring", OutputOptions),
)


@dataclass
class PretrainConfig(OutputOptions, RuntimeOptions, DataOptions, OptimOptions, LossOptions, ModelOptions, AugmentOptions):  # type: ignore[misc, valid-type]
    """Every setting of a pretraining, flat: `config.lr`, the YAML key `lr`, the option `--lr`; grouped in SECTIONS."""

    def augment_spec(self) -> AugmentSpec:
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(AugmentOptions)}
        return AugmentSpec(image_size=self.image_size, channels=self.in_channels,
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})

    def validate(self, named: dict[str, str] | None = None) -> None:
        """Reject values no run could use, naming the option as given (`named`: field -> how the user wrote it,
        e.g. "config run.yaml: key lr"; default --flag); the rest is checked where it is used."""
        def option(name: str) -> str:
            return (named or {}).get(name, f"--{_flag(name)}")

        positive = ("image_size", "stored_size", "batch_size", "epochs", "head_layers", "proj_dim", "knn_k", "knn_bank_size",
                    "max_image_pixels", "max_file_mb", "in_channels")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"{option(name)} must be > 0, got {getattr(self, name)}")
        for name in ("temperature", "knn_temperature", "lr", "dist_timeout"):
            if getattr(self, name) <= 0:
                raise UserError(f"{option(name)} must be > 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise UserError(f"{option('batch_size')} must be at least 2 (a contrastive loss needs other images as negatives), got {self.batch_size}")
        if self.semi_hard and self.loss == "nt_xent":
            raise UserError(f"{option('semi_hard')} applies to --loss nt_logistic and margin_triplet, not nt_xent")
        if self.stored_size is not None and self.image_size is not None and self.stored_size < self.image_size:
            raise UserError(f"{option('stored_size')} {self.stored_size} is smaller than --image-size {self.image_size}: "
                            "crops would be blown up from a smaller picture")
        for name in ("warmup_epochs", "weight_decay", "momentum", "keep_checkpoints", "knn_every", "save_every_steps",
                     "health_every"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"{option(name)} must be >= 0, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UserError(f"{option(f.name)} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        check_augment(self, option)
        self._validate_channels(option)
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise UserError(f"{option('value_range')} must be LOW,HIGH with LOW < HIGH, got {','.join(f'{v:g}' for v in self.value_range)}")
        self.grad_cache_request()
        if self.keep_best is not None and self.keep_best not in KEEP_BEST_HIGHER:
            raise UserError(f"{option('keep_best')} must name one of {', '.join(KEEP_BEST_HIGHER)}, got {self.keep_best!r}")
        if self.time_budget is not None:
            parse_duration(self.time_budget, option("time_budget"))
        self._validate_views(option)
        schedule = self.resolution()
        if schedule is not None:
            if self.image_size is not None and self.image_size != schedule.final_size:
                raise UserError(f"{option('resolution_schedule')} ends at {schedule.final_size} px but --image-size is "
                                f"{self.image_size}: the last stage is the size the encoder is evaluated at")
            if self.augment_mode != "batched":
                raise UserError(f"{option('resolution_schedule')} needs --augment-mode batched")

    def _validate_channels(self, option: Callable[[str], str]) -> None:
        """--in-channels other than 3 against the paths that know RGB only; one line naming both."""
        if self.in_channels == 3:
            return
        given = f"{option('in_channels')} {self.in_channels}"
        if self.augment_mode != "batched":
            raise UserError(f"{given} needs --augment-mode batched (the per-image reference is torchvision's RGB pipeline)")
        if self.decode == "device":
            raise UserError(f"{given} cannot be combined with {option('decode')} device (nvJPEG decodes RGB JPEGs only)")

    def read_policy(self) -> ReadPolicy:
        """What one image file of this run may be: its size limits, --strict, --in-channels and --value-range."""
        return ReadPolicy(self.max_image_pixels, self.max_file_mb << 20, self.strict, self.in_channels, self.value_range)

    def _validate_views(self, option: Callable[[str], str]) -> None:
        """--views against the options it depends on (see `view_groups`); one line naming both."""
        views = self.view_groups()
        if views is None:
            if self.view_anchors != "all":
                raise UserError(f"{option('view_anchors')} {self.view_anchors} needs --views with more than two views")
            return
        given = f"{option('views')} {self.views}"
        if self.image_size is not None and self.image_size != views.large_size:
            raise UserError(f"{given}: its largest views are {views.large_size} px but --image-size is {self.image_size}: "
                            "the large views are the size the encoder is evaluated at")
        too_large = [g.size for g in views.groups if self.stored_size is not None and g.size > self.stored_size]
        if too_large:
            raise UserError(f"{given}: {too_large[0]} px views are larger than {option('stored_size')} {self.stored_size}: "
                            "crops would be blown up from a smaller picture")
        if self.augment_mode != "batched":
            raise UserError(f"{given} needs --augment-mode batched (the per-image reference makes two views)")
        if self.resolution_schedule is not None:
            raise UserError(f"{given} cannot be combined with {option('resolution_schedule')}: both set the view sizes")
        if self.multi_crop() is None:
            return
        if self.semi_hard:
            raise UserError(f"{given} gives {views.views} views per image; {option('semi_hard')} compares each negative "
                            "with the one positive of two views")
        if self.view_anchors != "all" and self.loss != "nt_xent":
            raise UserError(f"{option('view_anchors')} {self.view_anchors} applies to --loss nt_xent, not {self.loss}")
        if isinstance(self.grad_cache_request(), int):
            raise UserError(f"{option('grad_cache_chunk')} {self.grad_cache_chunk}: gradient caching runs two views, and "
                            f"{given} gives {views.views}; use 'auto' (the memory plan refuses a batch that does not fit) or 'off'")

    def view_groups(self) -> MultiCrop | None:
        """The parsed --views, or None without it."""
        return None if self.views is None else MultiCrop.parse(self.views, tuple(self.crop_scale))

    def multi_crop(self) -> MultiCrop | None:
        """The multi-crop views of the run, or None for SimCLR's two views (also when --views says just that)."""
        views = self.view_groups()
        if views is None or views.is_pair(self.image_size or views.large_size, tuple(self.crop_scale)):
            return None
        return views

    def views_per_image(self) -> int:
        """Two, or every multi-crop view."""
        views = self.multi_crop()
        return 2 if views is None else views.views

    def anchor_views(self) -> int | None:
        """The loss's anchor views: None (all), or the large views with --view-anchors large."""
        views = self.multi_crop()
        return views.large_views if views is not None and self.view_anchors == "large" else None

    def resolution(self) -> ResolutionSchedule | None:
        """The progressive resolution schedule, if any."""
        if self.resolution_schedule is None:
            return None
        return ResolutionSchedule.parse(self.resolution_schedule, self.augment_ramp)

    def grad_cache_request(self) -> int | str:
        """'auto', 'off', or the chunk of images asked for."""
        value = str(self.grad_cache_chunk).strip().lower()
        if value in ("auto", "off", "none"):
            return "off" if value == "none" else value
        if not value.isdigit() or int(value) <= 0:
            raise UserError(f"--grad-cache-chunk must be 'auto', 'off' or a number of images > 0, got {self.grad_cache_chunk!r}")
        return int(value)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the value type, whether None is allowed) for the few annotations used above."""
    hint = eval(annotation, vars(typing), {}) if isinstance(annotation, str) else annotation
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)][0]
        return _base_type(inner)[0], True
    return (typing.get_origin(hint) or hint), False


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", tuple: "a pair of numbers"}


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check and convert one value for field `name`; the message names the option as the user wrote it
    (`--crop-scale` on the command line, the key and the file for YAML). Every number must be finite:
    NaN passes every `<= 0` check, so it is refused here, once, for all options."""
    f = {f.name: f for f in dataclasses.fields(PretrainConfig)}[name]
    kind, optional = _base_type(f.type)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise UserError(f"{where} may not be empty")
    converted = _convert(kind, value, where)
    numbers = converted if isinstance(converted, tuple) else (converted,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    return converted


def _convert(kind: type, value: Any, where: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            if len(items) != 2:
                raise ValueError
            return tuple(float(v) for v in items)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}") from None


def _yaml_where(source: str, key: str) -> str:
    return f"config {source}: key {key}"


def load_yaml(source: str) -> dict[str, Any]:
    """A preset name or a YAML file path -> checked key/value pairs."""
    if source in PRESETS:
        text = (resources.files("torchclr") / "configs" / f"{source}.yaml").read_text()
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"config {source} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"config {source} is not a text file (not UTF-8); give a YAML file") from None
        except OSError as err:
            raise UserError(f"config {source} cannot be read: {err.strerror or err}") from None
    if "\0" in text:
        raise UserError(f"config {source} is a binary file, not YAML")
    try:
        raw = yaml.safe_load(text) or {}
    except RecursionError:
        raise UserError(f"config {source} is nested too deeply to be a config") from None
    except yaml.YAMLError as err:
        raise UserError(f"config {source} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {source} must be a mapping of option: value")
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UserError(f"config {source}: unknown key {key!r}")
        values[name] = _coerce(name, value, _yaml_where(source, key))
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--option` per field, in a --help group per section, all defaulting to None so that unset options do not
    override the YAML."""
    parser.add_argument("--config", help=f"YAML file or preset ({', '.join(PRESETS)}) whose keys are these options")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the latest checkpoint in --out-dir, or from the checkpoint file given")
    for title, section in SECTIONS:
        group = parser.add_argument_group(title, section.__doc__)
        for f in dataclasses.fields(section):
            _add_option(group, f)


def _add_option(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    kind, _ = _base_type(f.type)
    default = f.default
    shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
    help_text = f"{f.metadata['help']} (default: {shown})"
    if kind is bool:
        group.add_argument(f"--{_flag(f.name)}", dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        group.add_argument(f"--{_flag(f.name)}", dest=f.name, default=None, metavar="X,Y" if kind is tuple else None,
                           choices=f.metadata.get("choices"), help=help_text)


def resolve(args: argparse.Namespace) -> PretrainConfig:
    """Defaults, then the YAML/preset, then the command line; validated."""
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    named = {name: _yaml_where(args.config, name) for name in values}
    for f in dataclasses.fields(PretrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = _coerce(f.name, given, "--" + _flag(f.name))
            named.pop(f.name, None)
    config = PretrainConfig(**values)
    config.validate(named)
    return config


def from_dict(values: dict[str, Any], where: str) -> PretrainConfig:
    """Rebuild a config stored in a checkpoint or run folder."""
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    return PretrainConfig(**{k: _coerce(k, v, f"{where}: key {k}") for k, v in values.items() if k in known})
