"""SimCLR pretraining: two views per image, encoder + head, contrastive loss, LARS, warm-up + cosine.

The loop is deliberately plain (see `train_one_epoch`); everything around it - data, checkpoints,
monitoring, processes - lives in its own module. Under torchrun every process runs `pretrain`: the model is
wrapped in DDP (global BN by default), the loss sees the embeddings of all processes, rank 0 alone writes
the run folder, and every rank extracts its share of the features for the kNN monitor and the final probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from torchclr import checkpoint, distributed, memory
from torchclr.budget import UNPLANNED_STEPS, TimeBudget, parse_duration
from torchclr.config import PretrainConfig
from torchclr.data.cache import default_stored_size
from torchclr.data.loaders import BatchedViews, PerImageViews, ViewBatches
from torchclr.data.plan import choose_mode, default_image_size, sample_sizes
from torchclr.data.skips import ReadPolicy
from torchclr.data.sources import ImageSet, open_images
from torchclr.data.streaming import StreamedViews
from torchclr.errors import UserError
from torchclr.evaluate.monitor import final_report, knn_every, open_labelled_eval
from torchclr.gradcache import grad_cache_backward
from torchclr.guard import DivergedError, FiniteGuard
from torchclr.interrupt import Interrupted, StopSignals
from torchclr.loss import build_loss
from torchclr.models import SimCLR, build_simclr, uses_cifar_stem
from torchclr.models.encoders import CUSTOM_ARCH, layer4_input_side
from torchclr.optim import build_optimizer, scaled_lr, warmup_cosine_scheduler
from torchclr.runlog import RunLog, prepare_run_folder
from torchclr.transforms.batched import StagedAugment


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' and 'cuda' mean this process's GPU (torchrun's LOCAL_RANK; 0 in a single process); 'cuda:1' is taken as said."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (try cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch")
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"--device {name}: process {local_rank} on this machine has no GPU of its own "
                            f"({torch.cuda.device_count()} visible); start at most that many per machine")
        device = torch.device("cuda", local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def _safe_autocast_dtype(config: PretrainConfig, dtype: torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """fp32 instead of bf16 on the CPU when a ResNet's layer 4 gets a 1x1 map (ImageNet stem at <= 16 px, CIFAR stem
    at <= 4 px, at any stage): PyTorch 2.14's bf16 weight gradient of a strided conv on a 1x1 input reads
    uninitialised memory there (NaN or garbage, differing between processes; tests/test_models.py pins the fallback)."""
    schedule = config.resolution()
    smallest = min(schedule.sizes) if schedule is not None else config.image_size
    stem = uses_cifar_stem(config.arch, config.image_size, config.cifar_stem)  # the model's, chosen at the final size
    if dtype != torch.bfloat16 or device.type != "cpu" or layer4_input_side(config.arch, smallest, stem) != 1:
        return dtype
    _say(f"note: --precision bf16 on the CPU computes wrong gradients when layer 4 sees a 1x1 map ({smallest} px views); "
         "training in fp32")
    return None


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def model_description(config: PretrainConfig | dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on to be loaded into a model."""
    values = dataclasses.asdict(config) if isinstance(config, PretrainConfig) else config
    stem = uses_cifar_stem(values["arch"], values["image_size"], values["cifar_stem"])
    return {"arch": values["arch"], "cifar_stem": stem, "head": values["head"],
            "head_layers": values["head_layers"], "proj_dim": values["proj_dim"]}


@dataclass
class StepContext:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    grad_cache_chunk: int | None = None
    guard: FiniteGuard | None = None  # watches loss and weights for NaN/inf (see torchclr.guard)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """z for a batch of [view 1; view 2] images, under the run's autocast and memory format."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.model(images)[1]


def training_step(ctx: StepContext, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """One step on a batch of view pairs; both views go through the network as one batch (BN sees 2N),
    or, with gradient caching, chunk by chunk with the same gradient (see `torchclr.gradcache`)."""
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.grad_cache_chunk and ctx.grad_cache_chunk < len(first):
        loss = grad_cache_backward(ctx.model, ctx.embed, ctx.loss_fn, first, second, ctx.grad_cache_chunk, ctx.scaler.scale)
    else:
        z = ctx.embed(torch.cat([first, second]))
        with ctx.autocast():
            loss = ctx.loss_fn(z)
        ctx.scaler.scale(loss).backward()
    if ctx.guard is not None and ctx.guard.skip_nonfinite and ctx.scaler.is_enabled():
        ctx.scaler.unscale_(ctx.optimizer)  # the guard judges the true gradients, not the fp16-scaled ones
    if ctx.guard is None or ctx.guard.update_allowed(loss):
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.scheduler.step()
    if ctx.guard is not None:
        ctx.guard.observe(loss)
    return loss.detach()


def train_one_epoch(ctx: StepContext, batches: ViewBatches, epoch: int, global_step: int, run: RunLog, progress: bool,
                    start_step: int = 0, after_step: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[int], bool] | None = None) -> tuple[int, float]:
    """Returns the step count after the epoch and the epoch's mean loss (over all processes and finite steps).

    `start_step` resumes mid-epoch; `after_step(step_in_epoch, global_step)` runs after every step (checkpoints);
    `should_stop(global_step)` ends the epoch early (the end of a --time-budget).
    """
    log_every = max(1, batches.steps_per_epoch // 10)
    total, finite, count, start = torch.zeros((), device=ctx.device), torch.zeros((), device=ctx.device), 0, time.perf_counter()
    bar = tqdm(total=batches.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}", disable=not progress, leave=False, dynamic_ncols=True)
    for step_in_epoch, (first, second) in enumerate(batches.epoch(epoch, start_step), start=start_step + 1):
        loss = training_step(ctx, first, second)
        total += torch.where(loss.isfinite(), loss, 0.0)  # a step skipped by --skip-nonfinite-steps has no loss
        finite += loss.isfinite()
        count += 1
        global_step += 1
        bar.update(1)
        if step_in_epoch % log_every == 0 or step_in_epoch == batches.steps_per_epoch:
            # Checked here and before every save, not every step, to keep the device from waiting on the host;
            # every rank sees the same verdict, so all stop together, before anything non-finite is saved.
            if ctx.guard is not None:
                ctx.guard.check()
            value, lr = distributed.mean_over_ranks(loss).item(), ctx.optimizer.param_groups[0]["lr"]
            if not math.isfinite(value) and not (ctx.guard is not None and ctx.guard.skip_nonfinite):
                raise DivergedError(f"loss became {value} by step {global_step}; lower --lr or raise --temperature")
            images_per_s = count * len(first) * distributed.world_size() / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}")
            record = {"step": global_step, "epoch": epoch + 1, "loss": value, "lr": lr, "images_per_s": images_per_s}
            run.log({k: v for k, v in record.items() if k != "loss" or math.isfinite(value)})
        if after_step is not None:
            after_step(step_in_epoch, global_step)
        if should_stop is not None and should_stop(global_step):
            break
    bar.close()
    return global_step, distributed.mean_over_ranks(total / finite.clamp(min=1)).item()


def _with_image_size(config: PretrainConfig, images: ImageSet, sizes: list[tuple[int, int]]) -> PretrainConfig:
    """The config with --image-size set: as given, or from the data (a folder of photos gets photo-sized views)."""
    if config.image_size is not None:
        return config
    schedule = config.resolution()
    if schedule is not None:
        return dataclasses.replace(config, image_size=schedule.final_size)
    size = default_image_size(sizes)
    longest = sorted(max(s) for s in sizes)
    _say(f"image size: {size} px, from the data (longer sides of {len(sizes)} sampled images: "
         f"{longest[0]}-{longest[-1]} px, median {longest[len(longest) // 2]}); set --image-size to change it")
    return dataclasses.replace(config, image_size=size)


def _say(line: str) -> None:
    if distributed.is_main_process():
        print(line, flush=True)


def _view_batches(config: PretrainConfig, images: ImageSet, sizes: list[tuple[int, int]], device: torch.device,
                  rank: int, world: int, run: RunLog) -> ViewBatches:
    """The data path: per image (the reference), or batched from memory or streamed, as --data-mode says or fits.

    Bad image files are skipped (reported and listed in the run folder) or, with --strict, fatal."""
    listed = len(images) + len(images.skipped)
    per_process = config.batch_size // world
    if per_process * world != config.batch_size:
        raise UserError(f"--batch-size {config.batch_size} must be a multiple of the number of processes ({world})")
    if per_process < 2:
        raise UserError(f"--batch-size {config.batch_size} over {world} processes leaves {per_process} image per process; "
                        "each needs at least 2")
    if len(images) < config.batch_size:
        raise UserError(f"data {images.origin} has {len(images)} images, fewer than --batch-size {config.batch_size}")
    spec = config.augment_spec()
    batches: ViewBatches
    if config.augment_mode == "per-image":
        _say(f"data: {len(images):,} images in {images.origin}, decoded per image in workers (--augment-mode per-image)")
        batches = PerImageViews(images, spec, per_process, device, config.seed, rank, world, config.workers)
    else:
        stored = config.stored_size or default_stored_size(spec.image_size, spec.crop_scale)
        plan = choose_mode("memory" if images.tensor is not None else config.data_mode, len(images), stored, sizes)
        _say(f"data: {len(images):,} images in {images.origin}, {'streamed' if plan.mode == 'stream' else 'in memory'}: {plan.reason}")
        if plan.mode == "stream":
            on_device = config.decode == "device" or (config.decode == "auto" and device.type == "cuda")
            _say(f"data: JPEGs decoded {f'on {device} in batches' if on_device else 'in DataLoader workers'} (--decode {config.decode})")
            batches = StreamedViews(images, spec, per_process, device, config.seed, stored, rank, world, config.workers,
                                    on_device)
        else:
            batches = BatchedViews(images, spec, per_process, device, config.seed, rank, world, config.cache_dir, stored)
    if images.skipped.entries and rank == 0:
        images.skipped.write_csv(run.dir / "skipped_files.csv")
        tqdm.write(f"torchclr: {images.skipped.summary(listed)}; list in {run.dir / 'skipped_files.csv'}", file=sys.stderr)
    if batches.steps_per_epoch < 1:
        raise UserError(f"data {images.origin}: too few usable images for one step of --batch-size {config.batch_size} "
                        f"({images.skipped.summary(listed)})")
    schedule = config.resolution()
    if schedule is not None and isinstance(batches, (BatchedViews, StreamedViews)):
        batches.augment = StagedAugment(schedule.stage_specs(spec), schedule.stage_at)
        _say(schedule.describe())
    return batches


def wrap_for_training(model: SimCLR, device: torch.device, sync_bn: bool, compile: bool) -> tuple[SimCLR, nn.Module]:
    """(the bare network, for checkpoints, the kNN monitor and export; the module a step calls).

    Under several processes: global BN (if `sync_bn`) and DDP, which starts every rank from rank 0's weights and
    averages the gradients; then torch.compile if asked.
    """
    several = distributed.world_size() > 1
    if several and sync_bn:
        model = distributed.global_batchnorm(model, device)
    forward_model: nn.Module = model
    if several:
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, torch.compile(forward_model) if compile else forward_model


def _rank_key(rank: int) -> str:
    return f"rng.augment.rank{rank}"


def _augment_states(batches: ViewBatches) -> dict[str, torch.Tensor]:
    """Every process's augmentation RNG state (each rank draws its own stream), for rank 0 to save; a collective."""
    generator = getattr(batches, "generator", None)
    if generator is None or distributed.world_size() == 1:
        return {}
    return {_rank_key(r): state for r, state in enumerate(distributed.all_gather_objects(generator.get_state()))}


def _restore(path: Path, config: PretrainConfig, model: nn.Module, ctx: StepContext, batches: ViewBatches,
             budget: TimeBudget | None) -> tuple[int, int, int]:
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") != "training":
        raise UserError(f"checkpoint {path} holds no training state to resume (it is a {meta.get('kind')!r} file)")
    mine, theirs = model_description(config), meta.get("model")
    if mine != theirs:
        raise UserError(f"checkpoint {path} was written for {theirs} but this run builds {mine}")
    checkpoint.load_model_state(model, checkpoint.model_tensors(tensors), path, f"{config.arch}")
    # rng.augment is rank 0's augmentation stream; every other rank takes its own, or keeps its fresh seed when
    # the checkpoint comes from a run with fewer processes.
    rank, generator = distributed.rank(), getattr(batches, "generator", None)
    checkpoint.restore_training(tensors, meta, ctx.optimizer, ctx.scheduler, generator if rank == 0 else None, ctx.scaler, path)
    own_state = tensors.get(_rank_key(rank))  # the states of ranks this run does not have are left unused
    if generator is not None and own_state is not None:
        checkpoint.set_generator_state(generator, own_state)
    if budget is not None:
        budget.resume_from(meta.get("budget"), str(path))
    try:
        return int(meta["epoch"]), int(meta.get("epoch_step", 0)), int(meta["step"])
    except (TypeError, ValueError):
        raise UserError(f"checkpoint {path} has malformed epoch/step metadata") from None


def _stop_agreed(stop: StopSignals, step_in_epoch: int, steps_per_epoch: int) -> bool:
    """Whether to stop on a signal now: at once in one process; under several, all agree at each tenth of an
    epoch (a collective), so that every rank saves and stops at the same step."""
    if distributed.world_size() == 1:
        return stop.received is not None
    if step_in_epoch % max(1, steps_per_epoch // 10) and step_in_epoch != steps_per_epoch:
        return False
    return any(distributed.all_gather_objects(stop.received is not None))


def pretrain(config: PretrainConfig, resume: str | None = None, encoder: nn.Module | None = None) -> dict[str, Any]:
    """Run (or continue) a pretraining; returns the last epoch's metrics and, with labelled data, the final report.

    `encoder`: the user's own module (images in [0, 1] -> features [B, d]) instead of `config.arch`; the run
    records it as arch 'custom'. Under torchrun each process calls this; it joins the process group for the run
    and leaves it at the end.
    """
    if encoder is not None:
        config = dataclasses.replace(config, arch=CUSTOM_ARCH, cifar_stem=None)
    device = resolve_device(config.device, distributed.local_rank())
    with distributed.process_group(device, config.dist_timeout), StopSignals() as stop:
        return _pretrain(config, resume, device, stop, encoder)


def _pretrain(config: PretrainConfig, resume: str | None, device: torch.device, stop: StopSignals,
              encoder: nn.Module | None = None) -> dict[str, Any]:
    budget = TimeBudget(parse_duration(config.time_budget)) if config.time_budget else None
    rank, world = distributed.rank(), distributed.world_size()
    dtype = autocast_dtype(config.precision, device)
    seed_everything(config.seed + rank, config.deterministic)
    prepare_run_folder(config.out_dir, resume=resume, overwrite=config.overwrite, remove=rank == 0)
    run = RunLog(config.out_dir, writer_enabled=rank == 0)

    policy = ReadPolicy(config.max_image_pixels, config.max_file_mb << 20, config.strict)
    images = open_images(config.data, config.train_split, config.download, policy)
    sizes = sample_sizes(images, seed=config.seed)
    config = _with_image_size(config, images, sizes)
    model: SimCLR = build_simclr(config.arch, config.image_size, config.cifar_stem, config.head, config.head_layers, config.proj_dim, encoder)
    dtype = _safe_autocast_dtype(config, dtype, device)
    batches = _view_batches(config, images, sizes, device, rank, world, run)
    labelled = open_labelled_eval(config) if config.final_report or config.knn_every != 0 else None
    monitor_every = knn_every(config, labelled) if labelled is not None else 0
    model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    model, forward_model = wrap_for_training(model, device, config.sync_bn, config.compile)
    lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    optimizer = build_optimizer(model, config.optimizer, lr=lr, weight_decay=config.weight_decay, momentum=config.momentum)
    warmup_steps = round(config.warmup_epochs * batches.steps_per_epoch)
    total_steps = batches.steps_per_epoch * config.epochs if budget is None else max(UNPLANNED_STEPS, warmup_steps)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps, warmup_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    loss_fn = build_loss(config.loss, config.temperature, config.margin, config.semi_hard, config.l2_normalize)
    ctx = StepContext(forward_model, loss_fn, optimizer, scheduler, scaler, device, dtype, config.channels_last)
    plan = memory.plan_pretraining(ctx, training_step, model, config.batch_size // world, config.image_size,
                                   config.grad_cache_request(), min(len(labelled.train), config.knn_bank_size) if labelled else 0)
    ctx.grad_cache_chunk = plan.chunk
    if labelled is not None:
        labelled.batch_size, labelled.knn_chunk = plan.eval_batch, plan.knn_chunk
    if rank == 0:
        print(plan.describe(), flush=True)

    start_epoch, start_step, global_step = 0, 0, 0
    if resume:
        # Rank 0 picks the file, so that every process continues from the same epoch.
        path = distributed.all_gather_objects(run.latest_checkpoint() if resume == "latest" else Path(resume))[0]
        if path is None:
            raise UserError(f"--resume: no checkpoint in {run.checkpoints} to resume from")
        start_epoch, start_step, global_step = _restore(path, config, model, ctx, batches, budget)
        run.truncate_after(global_step)
    elif rank == 0:  # rather now than after the first epoch
        checkpoint.check_free_space(run.checkpoints, checkpoint.estimated_training_bytes(model, config.optimizer), "checkpoints")
    run.write_config(config)
    ctx.guard = FiniteGuard(model, global_step, config.skip_nonfinite_steps)
    if budget is not None:
        budget.configure(scheduler, batches.steps_per_epoch, warmup_steps, config.resolution())
        budget.start()
    first_step = global_step

    def run_length() -> int:
        """The run's steps: fixed by --epochs, or as planned so far for --time-budget."""
        return total_steps if budget is None else budget.planned_steps or UNPLANNED_STEPS

    def next_step(global_step: int) -> None:
        """Before a batch is drawn: the resolution stage of the step about to run."""
        if isinstance(getattr(batches, "augment", None), StagedAugment):
            batches.augment.set_step(global_step, run_length())

    next_step(global_step)

    def save(epochs_done: int, global_step: int, mid_epoch_step: int = 0) -> Path:
        """Everything --resume needs, at the end of an epoch or mid-epoch; never a non-finite state."""
        assert ctx.guard is not None
        ctx.guard.check()
        augment_states = _augment_states(batches)
        path = run.checkpoint_path(epochs_done, global_step if mid_epoch_step else None)
        if rank == 0:
            info = {"config": _jsonable(config), "model": model_description(config), "epoch": epochs_done,
                    "step": global_step, "epoch_step": mid_epoch_step}
            if budget is not None:
                info["budget"] = budget.state()
            checkpoint.save_training(path, model, optimizer, scheduler, getattr(batches, "generator", None), info, scaler, augment_states)
            run.prune(config.keep_checkpoints)
        return path

    def after_step(epoch: int, step_in_epoch: int, global_step: int) -> None:
        """The time budget's clock, mid-epoch checkpoints (every --save-every-steps, and on SIGTERM/SIGUSR1, then
        stop), and the resolution stage of the next step."""
        if budget is not None:
            budget.after_step(global_step, first_step, device)
        next_step(global_step)
        signalled = _stop_agreed(stop, step_in_epoch, batches.steps_per_epoch)
        periodic = config.save_every_steps and global_step % config.save_every_steps == 0
        if not signalled and not (periodic and step_in_epoch < batches.steps_per_epoch):  # the epoch's end saves anyway
            return
        path = save(epoch, global_step, step_in_epoch)
        distributed.barrier()
        if signalled:
            raise Interrupted(stop.received or signal.SIGTERM, f"stopped by {stop.name() or 'a signal on another process'} "
                              f"at step {global_step} (epoch {epoch + 1}, step {step_in_epoch} of {batches.steps_per_epoch}); "
                              f"saved {path}; continue with the same command and --resume")

    record: dict[str, Any] = {}
    epochs = range(start_epoch, config.epochs) if budget is None else itertools.count(start_epoch)
    for epoch in epochs:
        before = global_step - (start_step if epoch == start_epoch else 0)
        global_step, mean_loss = train_one_epoch(ctx, batches, epoch, global_step, run, config.progress and rank == 0,
                                                 start_step if epoch == start_epoch else 0,
                                                 lambda step_in_epoch, step: after_step(epoch, step_in_epoch, step),
                                                 budget.finished if budget is not None else None)
        last = epoch + 1 == config.epochs if budget is None else budget.finished(global_step)
        steps_in_epoch = global_step - before
        with budget.overhead() if budget is not None else contextlib.nullcontext():
            record = {"step": global_step, "epoch": epoch + 1, "epoch_loss": mean_loss}
            if config.skip_nonfinite_steps:
                record["skipped_steps"] = ctx.guard.skipped
            due = monitor_every and ((epoch + 1) % monitor_every == 0 or (last and budget is None))
            if labelled is not None and due and steps_in_epoch == batches.steps_per_epoch:
                record["knn_top1"] = labelled.knn_top1(model.encoder, device, config.knn_k, config.knn_temperature,
                                                       config.knn_bank_size, config.seed)  # every rank extracts a share
            if rank == 0:
                run.log(record)
            if steps_in_epoch == batches.steps_per_epoch:
                save(epoch + 1, global_step)
            else:  # a --time-budget ending mid-epoch
                save(epoch, global_step, steps_in_epoch)
            if rank == 0:
                run.plot()
                if config.progress:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "epoch"))
                    tqdm.write(f"epoch {epoch + 1}/{config.epochs if budget is None else '?'}: {shown}")
            distributed.barrier()  # the others wait here while rank 0 saves
        if last:
            break
    if budget is not None:
        _say(budget.summary(global_step))
        if rank == 0:
            run.log({"step": global_step, **budget.report()})

    ctx.guard.check()
    if rank == 0:
        export_encoder(run.dir / "encoder.safetensors", model, config)
    if labelled is not None and config.final_report:
        record["report"] = final_report(labelled, model.encoder, config, device, run.dir)
    run.close()
    return record


def _jsonable(config: PretrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def export_encoder(path: Path, model: SimCLR, config: PretrainConfig) -> None:
    """The encoder (what users carry into their work) and its projection head (for z), loadable with
    `torchclr.load_encoder` and `torchclr.pretrained.load_head`."""
    info = {"kind": "encoder", "model": model_description(config), "image_size": config.image_size,
            "feature_dim": model.encoder.feature_dim, "config": _jsonable(config)}
    tensors = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    checkpoint.save_atomically(tensors, info, path)
