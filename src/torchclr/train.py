"""SimCLR pretraining: two views per image, encoder + head, contrastive loss, LARS, warm-up + cosine.

`_pretrain` is the whole run, as DINO's `train_dino` or nanoGPT's loop are: build, loop over epochs and steps,
save. What it calls is small and lives elsewhere: the view pipeline (`torchclr.data.pipeline`), the step
(`torchclr.step`), the run's length (`torchclr.length`: fixed epochs or a time budget), the learning rate as a
function of the step, the finite guard, the checkpoints and the kNN monitor. Under torchrun every process runs
`pretrain`: the model is wrapped in DDP (global BN by default), the loss sees the embeddings of all processes,
rank 0 alone writes the run folder, and every rank extracts its share of the features for the kNN monitor and
the final probe.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm import tqdm

from torchclr import checkpoint, distributed, memory
from torchclr.budget import TimeBudget, parse_duration
from torchclr.config import PretrainConfig
from torchclr.data.loaders import ViewBatches
from torchclr.data.pipeline import build_view_batches, with_image_size
from torchclr.data.plan import sample_sizes
from torchclr.data.sources import ImageSet, open_images
from torchclr.errors import UserError
from torchclr.evaluate.features import extract_features
from torchclr.evaluate.monitor import LabelledEval, final_report, knn_every, open_labelled_eval
from torchclr.guard import DivergedError, FiniteGuard
from torchclr.health.monitor import EpochHealth, keep_as_best, restore_last_healthy
from torchclr.init_weights import load_initial_weights
from torchclr.interrupt import Interrupted, StopSignals
from torchclr.length import FixedEpochs, RunLength
from torchclr.loss import build_loss
from torchclr.models import SimCLR, build_simclr
from torchclr.models.encoders import CUSTOM_ARCH
from torchclr.optim import build_optimizer, scaled_lr, set_learning_rate, warmup_cosine
from torchclr.pretrained import config_as_json, model_description, save_encoder, stored_description
from torchclr.progress import EpochMeter
from torchclr.runlog import RunLog, lock_run_folder, prepare_run_folder
from torchclr.runtime import autocast_dtype, resolve_device, say, seed_everything, training_dtype, wrap_for_training
from torchclr.step import StepContext, training_step
from torchclr.transforms.ablation import AblationOps
from torchclr.writer import BackgroundWrites


@dataclass
class Position:
    """Where a run is: `step` steps done in all, `epoch_step` of them in the epoch `epoch` (0-based) in progress."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0


@dataclass(kw_only=True)
class Pretraining:
    """A run, built: the network, its step, its data, its length and its folder. The loop calls its methods."""

    config: PretrainConfig
    model: SimCLR  # the bare network (checkpoints, monitor, export); the step calls ctx.model
    ctx: StepContext
    views: ViewBatches
    length: RunLength
    run: RunLog
    labelled: LabelledEval | None
    monitor_every: int
    health: EpochHealth | None  # label-free health of the representation (torchclr.health), if measured
    peak_lr: float
    device: torch.device
    data: dict[str, Any]  # the training data's identity (ImageSet.identity), kept in checkpoints for --resume
    collapsed: bool = False  # --stop-on-collapse saw a collapse: the run ends after this epoch
    writes: BackgroundWrites = field(default_factory=BackgroundWrites)  # checkpoints written beside training


    @property
    def main(self) -> bool:
        return distributed.rank() == 0

    def lr_at(self, step: int) -> float:
        """The learning rate of `step`: warm-up, then cosine to 0 over the run's length (paper section 2.3)."""
        return self.peak_lr * warmup_cosine(step, self.length.total_steps, self.length.warmup_steps)

    def log_point(self, meter: EpochMeter, loss: torch.Tensor, position: Position) -> None:
        """Every tenth of an epoch: the guard's verdict (every rank sees the same, so all stop together, before
        anything non-finite is saved) and a metrics line. Not every step: the device need not wait for the host."""
        self.guard.check()
        value, lr = distributed.mean_over_ranks(loss).item(), self.ctx.optimizer.param_groups[0]["lr"]
        if not math.isfinite(value) and not self.guard.skip_nonfinite:
            raise DivergedError(f"loss became {value} by step {position.step}; lower --lr or raise --temperature")
        meter.show(value, lr)
        images_per_s = meter.images_per_second()
        record = {"step": position.step, "epoch": position.epoch + 1, "loss": value, "lr": lr,
                  "images_per_s": images_per_s, "views_per_s": images_per_s * meter.views_per_image}
        self.run.log({k: v for k, v in record.items() if k != "loss" or math.isfinite(value)})

    @property
    def guard(self) -> FiniteGuard:
        assert self.ctx.guard is not None
        return self.ctx.guard

    def stop_agreed(self, stop: StopSignals, meter: EpochMeter) -> bool:
        """Whether to stop on a signal now: at once in one process; under several, all agree at each log point
        (a collective), so that every rank saves and stops at the same step."""
        if distributed.world_size() == 1:
            return stop.received is not None
        return meter.at_log_point() and any(distributed.all_gather_objects(stop.received is not None))

    def checkpoint_due(self, position: Position) -> bool:
        """--save-every-steps, mid-epoch (the epoch's end saves anyway)."""
        every = self.config.save_every_steps
        return bool(every) and position.step % every == 0 and position.epoch_step < self.views.steps_per_epoch

    def save(self, position: Position) -> Path:
        """Everything --resume needs, at an epoch's end (epoch_step 0) or mid-epoch; never a non-finite state.
        The file is written in the background: `flush()` before anything reads it."""
        self.guard.check()
        augment_states = _augment_states(self.views)
        mid_epoch = position.epoch_step > 0
        path = self.run.checkpoint_path(position.epoch, position.step if mid_epoch else None)
        if self.main:
            self.flush()
            info = {"config": config_as_json(self.config), "model": model_description(self.config), "epoch": position.epoch,
                    "step": position.step, "epoch_step": position.epoch_step, "budget": self.length.state(), "data": self.data}
            checkpoint.save_training(path, self.model, self.ctx.optimizer, self.peak_lr, self.views.generator, info,
                                     self.ctx.scaler, augment_states, writes=self.writes)
        return path

    def flush(self) -> None:
        """The last checkpoint on disk (its write error, if any, raised here) and the older ones pruned."""
        self.writes.wait()
        if self.main:
            self.run.prune(self.config.keep_checkpoints)

    def interrupted(self, stop: StopSignals, position: Position) -> Interrupted:
        path = self.save(position)
        self.flush()
        if self.main:
            self.run.plot(force=True)
        distributed.barrier()
        return Interrupted(stop.received or signal.SIGTERM, f"stopped by {stop.name() or 'a signal on another process'} "
                           f"at step {position.step} (epoch {position.epoch + 1}, step {position.epoch_step} of "
                           f"{self.views.steps_per_epoch}); saved {path}; continue with the same command and --resume")

    def end_epoch(self, meter: EpochMeter, position: Position) -> dict[str, Any]:
        """The epoch's record (mean loss, kNN when due), its checkpoint and curves; returns the record."""
        record: dict[str, Any] = {"step": position.step, "epoch": position.epoch + 1, "epoch_loss": meter.close()}
        if self.config.skip_nonfinite_steps:
            record["skipped_steps"] = self.guard.skipped
        if self.monitor_due(position, complete=meter.complete):
            assert self.labelled is not None
            record["knn_top1"] = self.labelled.knn_top1(self.model.encoder, self.device, self.config.knn_k,
                                                        self.config.knn_temperature, self.config.knn_bank_size,
                                                        self.config.seed)  # every rank extracts a share
        verdict = (self.health.after_epoch(position.epoch + 1, self.model, self.device, self.ctx.dtype, record)
                   if self.health is not None and meter.complete else None)
        if verdict is not None and verdict.warning:
            say(verdict.warning)
        if self.main:
            self.run.log(record)
        if verdict is not None and verdict.stop:  # --stop-on-collapse: the collapsed state is not saved
            self.flush()
            say(restore_last_healthy(self.model, self.run.latest_checkpoint(), position.epoch + 1))
            self.collapsed = True
        else:
            saved = self.save(Position(position.epoch + 1, 0, position.step) if meter.complete else position)
            if verdict is not None and verdict.best and self.main:
                self.flush()
                keep_as_best(saved, self.run.dir)
        if self.main:
            self.run.plot()
            if self.config.progress:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "epoch"))
                tqdm.write(f"epoch {position.epoch + 1}/{self.length.epochs or '?'}: {shown}")
        distributed.barrier()  # the others wait here while rank 0 saves
        return record

    def monitor_due(self, position: Position, *, complete: bool) -> bool:
        """The kNN monitor runs every --knn-every complete epochs and after the run's last step (also where a time
        budget ends mid-epoch), so that every finished run logs its final kNN."""
        every = self.monitor_every
        if not every:
            return False
        return (complete and (position.epoch + 1) % every == 0) or self.length.done(position.step)

    def check_same_data(self, meta: dict[str, Any], path: Path) -> None:
        """Refuse to resume on other data than the checkpoint's (its step would index other images) unless
        --resume-other-data asks for it, and then say so. Checkpoints older than this record are not checked."""
        theirs = meta.get("data")
        if not isinstance(theirs, dict) or theirs == self.data:
            return
        differ = (f"{self.data['images']} images against the checkpoint's {theirs.get('images')}"
                  if theirs.get("images") != self.data["images"] else "as many images, but other names, labels or order")
        other = f"--data {self.config.data} is not the data checkpoint {path} was trained on ({differ})"
        if not self.config.resume_other_data:
            raise UserError(f"{other}; give the run's own --data, or --resume-other-data to continue on this data")
        if self.main:
            print(f"torchclr: note: {other}; continuing on it (--resume-other-data)", file=sys.stderr, flush=True)

    def finished(self, position: Position) -> bool:
        """Whether the run resumed had already ended: its length reached and its end written."""
        return self.length.done(position.step) and self.run.ended()

    def start_fresh(self) -> Position:
        """A new run: the encoder from --init's weights if given, and room for checkpoints (checked now rather
        than after the first epoch)."""
        if self.config.init:
            say(load_initial_weights(self.model.encoder, self.config.init, download=self.config.download))
        if self.main:
            checkpoint.check_free_space(self.run.checkpoints,
                                        checkpoint.estimated_training_bytes(self.model, self.config.optimizer), "checkpoints")
        return Position()

    def restore(self, resume: str) -> Position:
        """The state of the checkpoint `resume` names ('latest': the newest in the run folder); rank 0 picks the
        file, so that every process continues from the same step."""
        path = distributed.all_gather_objects(self.run.latest_checkpoint() if resume == "latest" else Path(resume))[0]
        if path is None:
            raise UserError(f"--resume: no checkpoint in {self.run.checkpoints} to resume from")
        tensors, meta = checkpoint.load(path)
        if meta.get("kind") != "training":
            raise UserError(f"checkpoint {path} holds no training state to resume (it is a {meta.get('kind')!r} file)")
        mine, theirs = model_description(self.config), stored_description(meta.get("model") or {})
        if mine != theirs:
            shift = " (a run of torchclr 0.2 resumes with --head-shift)" if theirs["head_shift"] != mine["head_shift"] else ""
            raise UserError(f"checkpoint {path} was written for {theirs} but this run builds {mine}{shift}")
        self.check_same_data(meta, path)
        checkpoint.load_model_state(self.model, checkpoint.model_tensors(tensors), path, f"{self.config.arch}")
        # rng.augment is rank 0's augmentation stream; every other rank takes its own, or keeps its fresh seed when
        # the checkpoint comes from a run with fewer processes.
        rank, generator = distributed.rank(), self.views.generator
        self.peak_lr = checkpoint.restore_training(tensors, meta, self.ctx.optimizer, generator if rank == 0 else None,
                                                   self.ctx.scaler, path)
        own_state = tensors.get(_rank_key(rank))  # the states of ranks this run does not have are left unused
        if generator is not None and own_state is not None:
            checkpoint.set_generator_state(generator, own_state)
        if isinstance(self.length, TimeBudget):
            self.length.resume_from(meta.get("budget"), str(path))
        try:
            position = Position(int(meta["epoch"]), int(meta.get("epoch_step", 0)), int(meta["step"]))
        except (TypeError, ValueError):
            raise UserError(f"checkpoint {path} has malformed epoch/step metadata") from None
        self.run.truncate_after(position.step)
        return position


def train_one_epoch(job: Pretraining, position: Position, stop: StopSignals) -> EpochMeter:
    """The steps of epoch `position.epoch` from `position.epoch_step` on, until its end or the run's."""
    meter = EpochMeter(epoch=position.epoch, steps_per_epoch=job.views.steps_per_epoch, start_step=position.epoch_step,
                       images_per_step=job.views.batch_size, views_per_image=job.config.views_per_image(), device=job.device,
                       show=job.config.progress and job.main)
    job.views.set_step(position.step, job.length.total_steps)
    for views in job.views.epoch(position.epoch, position.epoch_step):
        set_learning_rate(job.ctx.optimizer, job.lr_at(position.step))
        loss = training_step(job.ctx, *views)
        position.step, position.epoch_step = position.step + 1, position.epoch_step + 1
        job.length.after_step(position.step)
        job.views.set_step(position.step, job.length.total_steps)  # the resolution stage of the next batch
        if meter.update(loss):
            job.log_point(meter, loss, position)
        if job.stop_agreed(stop, meter):
            raise job.interrupted(stop, position)
        if job.checkpoint_due(position):
            job.save(position)
            distributed.barrier()
        if job.length.done(position.step):
            break
    return meter


def pretrain(config: PretrainConfig, resume: str | None = None, encoder: nn.Module | None = None, *,
             ablation: AblationOps | None = None) -> dict[str, Any]:
    """Run (or continue) a pretraining; returns the last epoch's metrics and, with labelled data, the final report.

    `encoder`: the user's own module (images in [0, 1] -> features [B, d]) instead of `config.arch`; the run
    records it as arch 'custom'. `ablation`: the figure 5 study's extra view ops (`torchclr ablate`). Under
    torchrun each process calls this; it joins the process group for the run and leaves it at the end.
    """
    if encoder is not None:
        config = dataclasses.replace(config, arch=CUSTOM_ARCH, cifar_stem=None)
    device = resolve_device(config.device, distributed.local_rank())
    with distributed.process_group(device, config.dist_timeout), StopSignals() as stop, _run_folder_held(config.out_dir):
        return _pretrain(config, resume, device, stop, encoder, ablation)


@contextmanager
def _run_folder_held(out_dir: str) -> Iterator[None]:
    """Rank 0 holds the run folder's lock for the whole run. Every rank learns whether it got it, so that a refusal
    ends all processes in one line instead of leaving the others waiting at a barrier."""
    with ExitStack() as held:
        refusal = None
        if distributed.rank() == 0:
            try:
                held.enter_context(lock_run_folder(out_dir))
            except UserError as err:
                refusal = str(err)
        refusal = distributed.all_gather_objects(refusal)[0]
        if refusal is not None:
            raise UserError(refusal)
        yield


def _pretrain(config: PretrainConfig, resume: str | None, device: torch.device, stop: StopSignals,
              encoder: nn.Module | None, ablation: AblationOps | None) -> dict[str, Any]:
    if resume == "latest" and (ended := ended_with_same_length(config)) is not None:
        return _nothing_to_do(config, ended)
    job = build_pretraining(config, device, encoder, ablation, resume=resume)
    position = job.restore(resume) if resume else job.start_fresh()
    if resume and job.finished(position):
        return _nothing_to_do(config, job.run)
    job.run.write_config(job.config)
    job.ctx.guard = FiniteGuard(job.model, position.step, config.skip_nonfinite_steps)
    job.length.start(position.step)

    record: dict[str, Any] = {}
    with job.writes:  # the checkpoints written in the background land before the run ends, by an error too
        while not (job.length.done(position.step) or job.collapsed):
            meter = train_one_epoch(job, position, stop)
            with job.length.overhead():
                record = job.end_epoch(meter, position)
            if meter.complete:
                position = Position(position.epoch + 1, 0, position.step)

    if isinstance(job.length, TimeBudget):
        say(job.length.summary(position.step))
        if job.main:
            job.run.log({"step": position.step, **job.length.report()})
    job.guard.check()
    job.flush()
    if job.main:
        save_encoder(job.run.dir / "encoder.safetensors", job.model, job.config)
    if job.labelled is not None and config.final_report:
        record["report"] = final_report(job.labelled, job.model.encoder, job.config, device, job.run.dir)
    job.run.close()
    return record


def ended_with_same_length(config: PretrainConfig) -> RunLog | None:
    """The run folder when its run ended with the network, --data, --epochs and --time-budget that `config` asks
    for (the same command again), known from the files alone, before any data is decoded or memory probed; else
    None (and the full resume path decides)."""
    run = RunLog(config.out_dir, writer_enabled=False)
    if not run.ended():
        return None
    try:
        meta = checkpoint.read_metadata(run.dir / "encoder.safetensors")
    except UserError:
        return None
    recorded = meta.get("config", {})
    size = config.image_size or recorded.get("image_size")  # none given: from the data, the run's own if it is the same
    if not isinstance(size, int):
        return None
    config = dataclasses.replace(config, image_size=size)
    same = (stored_description(meta["model"]) == model_description(config)
            and all(recorded.get(key) == getattr(config, key) for key in ("data", "epochs", "time_budget")))
    return run if same else None


def _nothing_to_do(config: PretrainConfig, run: RunLog) -> dict[str, Any]:
    """Say that the resumed run had ended; its last epoch's record is what `pretrain` returns."""
    record = run.last_epoch_record()
    say(f"torchclr: the run in {config.out_dir} is finished (step {record.get('step', '?')}, epoch "
        f"{record.get('epoch', '?')}); nothing to do: give a larger --epochs to train on, or --overwrite to start again")
    return record


def build_pretraining(config: PretrainConfig, device: torch.device, encoder: nn.Module | None,
                      ablation: AblationOps | None = None, *, resume: str | None = None) -> Pretraining:
    """Everything a run needs before its first step: data and views, the network, loss, optimiser, run length,
    the memory plan (gradient caching and evaluation batches) and the run folder (refused when it holds another run,
    unless `resume` continues it or --overwrite clears it). The order is the one that draws the seeded random
    numbers (weights, then views, then the memory plan's trial steps) as every earlier version did."""
    rank = distributed.rank()
    seed_everything(config.seed + rank, config.deterministic)
    prepare_run_folder(config.out_dir, resume=resume, overwrite=config.overwrite, remove=rank == 0)
    distributed.barrier()  # the others wait while rank 0 clears an --overwrite folder
    run = RunLog(config.out_dir, writer_enabled=rank == 0)
    images = open_images(config.data, config.train_split, config.download, config.read_policy())
    sizes = sample_sizes(images, seed=config.seed)
    config = with_image_size(config, sizes)
    model = build_simclr(config.arch, config.image_size, config.cifar_stem, config.head, config.head_layers,
                         config.proj_dim, encoder, zero_init_residual=config.zero_init_residual, head_shift=config.head_shift,
                         in_channels=config.in_channels)
    batches = _usable_view_batches(config, images, sizes, device, run, ablation)
    labelled = open_labelled_eval(config) if config.final_report or config.knn_every != 0 else None
    monitor_every = knn_every(config, labelled) if labelled is not None else 0
    health = EpochHealth.for_run(config, images, monitor_every > 0)
    model, ctx, peak_lr = _step_context(config, model, device)
    length = run_length(config, batches.steps_per_epoch, device)
    _plan_memory(config, ctx, model, labelled)
    return Pretraining(config=config, model=model, ctx=ctx, views=batches, length=length, run=run, labelled=labelled,
                       monitor_every=monitor_every, health=health, peak_lr=peak_lr, device=device, data=images.identity())


def _usable_view_batches(config: PretrainConfig, images: ImageSet, sizes: list[tuple[int, int]], device: torch.device,
                         run: RunLog, ablation: AblationOps | None) -> ViewBatches:
    """The run's views of `images`; the files left out (listing and decoding) counted in one line and listed in
    skipped_files.csv; too few usable images for one step is a one-line error."""
    rank, world = distributed.rank(), distributed.world_size()
    skipped_listing = len(images.skipped)
    listed = len(images) + skipped_listing
    batches = build_view_batches(config, images, sizes, device, rank=rank, world=world, ablation=ablation)
    if images.skipped.entries and rank == 0:  # the data line above counted the listed images; this one what is used
        images.skipped.write_csv(run.dir / "skipped_files.csv")
        decoding = len(images.skipped) - skipped_listing
        tqdm.write(f"torchclr: {images.skipped.summary(listed)}, {skipped_listing} when listing and {decoding} when "
                   f"decoding; {listed - len(images.skipped):,} images used; list in {run.dir / 'skipped_files.csv'}",
                   file=sys.stderr)
    if batches.steps_per_epoch < 1:
        raise UserError(f"data {images.origin}: too few usable images for one step of --batch-size {config.batch_size} "
                        f"({images.skipped.summary(listed)})")
    return batches


def _step_context(config: PretrainConfig, model: SimCLR, device: torch.device) -> tuple[SimCLR, StepContext, float]:
    """The network on its device (wrapped for several processes), its optimiser at the scaled peak lr, the loss and
    the precision: what one training step needs. Returns the bare network, the step's context and the peak lr."""
    dtype = training_dtype(autocast_dtype(config.precision, device), device, config)
    model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    model, forward_model = wrap_for_training(model, device, sync_bn=config.sync_bn, compile=config.compile)
    peak_lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    optimizer = build_optimizer(model, config.optimizer, lr=peak_lr, weight_decay=config.weight_decay, momentum=config.momentum)
    loss_fn = build_loss(config.loss, config.temperature, config.margin, config.semi_hard, config.l2_normalize,
                         views=config.views_per_image(), anchor_views=config.anchor_views())
    ctx = StepContext(model=forward_model, optimizer=optimizer, device=device, dtype=dtype, channels_last=config.channels_last,
                      loss_fn=loss_fn, scaler=torch.amp.GradScaler(device.type, enabled=config.precision == "fp16"))
    return model, ctx, peak_lr


def _plan_memory(config: PretrainConfig, ctx: StepContext, model: SimCLR, labelled: LabelledEval | None) -> None:
    """Measure a step and set what fits: the gradient-caching chunk of the step and the evaluation batch sizes."""
    plan = memory.plan_pretraining(ctx, training_step, model, config.batch_size // distributed.world_size(),
                                   config.image_size, config.grad_cache_request(),
                                   min(len(labelled.train), config.knn_bank_size) if labelled else 0,
                                   views=config.multi_crop(), infer=extract_features)
    ctx.grad_cache_chunk = plan.chunk
    if labelled is not None:
        labelled.batch_size, labelled.knn_chunk = plan.eval_batch, plan.knn_chunk
    say(plan.describe())


def run_length(config: PretrainConfig, steps_per_epoch: int, device: torch.device) -> RunLength:
    """--epochs, or --time-budget: as many steps as fit, planned as the run goes."""
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if not config.time_budget:
        return FixedEpochs(epochs=config.epochs, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps)
    budget = TimeBudget(parse_duration(config.time_budget))
    budget.configure(steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps, schedule=config.resolution(), device=device)
    return budget


def _rank_key(rank: int) -> str:
    return f"rng.augment.rank{rank}"


def _augment_states(views: ViewBatches) -> dict[str, torch.Tensor]:
    """Every process's augmentation RNG state (each rank draws its own stream), for rank 0 to save; a collective."""
    if views.generator is None or distributed.world_size() == 1:
        return {}
    return {_rank_key(r): state for r, state in enumerate(distributed.all_gather_objects(views.generator.get_state()))}
