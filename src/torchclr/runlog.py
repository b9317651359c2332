"""The run folder: resolved config, metrics.jsonl, TensorBoard scalars, loss curve and checkpoints.

Only the main process writes; the others get a RunLog that does nothing but know the paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, ContextManager

import yaml

from torchclr.checkpoint import remove_stale_temporaries
from torchclr.errors import UserError
from torchclr.writer import append_line, locked, save_figure, write_text

# epoch-0003.safetensors: after 3 epochs; epoch-0003-step-00000420.safetensors: mid-epoch 4, at global step 420.
CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{8,}))?\.safetensors$")


# What a run writes in its folder (besides checkpoints/): removed by --overwrite, nothing else is touched.
RUN_FILES = ("metrics.jsonl", "config.yaml", "encoder.safetensors", "loss_curve.png", "skipped_files.csv", "linear_eval.json")
RUN_FOLDERS = ("tensorboard", "report")
PLOT_INTERVAL_S = 30.0  # loss_curve.png is redrawn at most this often during a run, and at its end


RUN_LOCK = "run.lock"  # held by the process writing the folder (torchclr.writer.locked)


def lock_run_folder(out_dir: str | Path) -> ContextManager[None]:
    """The run folder's lock (OUT_DIR/run.lock), made with the folder: a second `pretrain` on the same --out-dir
    is refused in one line instead of both writing (or one --overwrite clearing) the other's files."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out-dir {folder}: cannot create it ({err.strerror or err})") from None
    return locked(folder / RUN_LOCK, option="--out-dir", path=folder, command="pretrain")


def prepare_run_folder(out_dir: str | Path, *, resume: str | None, overwrite: bool, remove: bool = True) -> None:
    """Refuse a fresh run in a folder holding another run (the two would mix: new encoder, old checkpoints,
    appended metrics), unless `resume` continues it or `overwrite` removes its files first (when `remove`: rank 0)."""
    folder = Path(out_dir)
    held = [name for name in ("metrics.jsonl", "encoder.safetensors") if (folder / name).is_file()]
    checkpoints = [p for p in (folder / "checkpoints").glob("*.safetensors") if CHECKPOINT_PATTERN.match(p.name)]
    if checkpoints:
        held.append(f"{len(checkpoints)} checkpoint(s)")
    if not held or resume:
        return
    if not overwrite:
        raise UserError(f"--out-dir {folder} holds a run ({', '.join(held)}): continue it with --resume, start afresh "
                        "there with --overwrite, or give another --out-dir")
    if remove:
        for path in [*(folder / name for name in RUN_FILES), *checkpoints]:
            path.unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(folder / name, ignore_errors=True)
        _note(f"--overwrite: removed the previous run's files in {folder}")


class RunLog:
    def __init__(self, out_dir: str | Path, writer_enabled: bool) -> None:
        self.dir = Path(out_dir)
        self.enabled = writer_enabled
        self.checkpoints = self.dir / "checkpoints"
        self._tensorboard: Any = None
        self._no_matplotlib = False
        self._plotted_at = -math.inf
        self._curve: list[tuple[int, float]] = []
        self._monitor: list[tuple[int, float]] = []
        self._noted: set[str] = set()
        if writer_enabled:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            stale = remove_stale_temporaries(self.checkpoints)
            if stale:
                print(f"torchclr: note: removed {len(stale)} temporary file(s) left in {self.checkpoints} by a killed run",
                      file=sys.stderr)
            self._read_back_metrics()

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) of metrics.jsonl; a line cut short by a killed run is dropped."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append((line, record))
        return records

    def _read_back_metrics(self) -> None:
        """A resumed run continues the same curves."""
        for _, record in self._records():
            self._remember(record)

    def _remember(self, record: dict[str, Any]) -> None:
        if "loss" in record and "step" in record:
            self._curve.append((record["step"], record["loss"]))
        if "knn_top1" in record:
            self._monitor.append((record["epoch"], record["knn_top1"]))

    def last_epoch_record(self) -> dict[str, Any]:
        """The last epoch's line of metrics.jsonl (what `pretrain` returns), {} when there is none."""
        return next((record for _, record in reversed(self._records()) if "epoch_loss" in record), {})

    def truncate_after(self, step: int) -> None:
        """Drop metric lines past the checkpoint a resume starts from, so the curves never double back."""
        path = self.dir / "metrics.jsonl"
        if not self.enabled or not path.exists():
            return
        kept = "".join(line + "\n" for line, record in self._records() if record.get("step", 0) <= step)
        if kept != path.read_text(errors="replace"):  # else nothing past the checkpoint and no cut line: left as it is
            write_text(path, kept, what="the run's metrics")
        self._curve, self._monitor = [], []
        self._read_back_metrics()

    def write_config(self, config: Any) -> None:
        if self.enabled:
            values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
            write_text(self.dir / "config.yaml", yaml.safe_dump(values, sort_keys=False), what="the run's config")

    @property
    def tensorboard(self) -> Any:
        """The SummaryWriter, or None without the `tensorboard` extra (noted once; metrics.jsonl has everything)."""
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard = False
                _note("TensorBoard is not installed, so no TensorBoard logs (pip install 'torchclr[tensorboard]'); "
                      "metrics.jsonl has every value")
            else:
                self._tensorboard = SummaryWriter(str(self.dir / "tensorboard"))
        return self._tensorboard or None

    def log(self, record: dict[str, Any]) -> None:
        """One JSON line plus a TensorBoard scalar for each number (step-indexed)."""
        if not self.enabled:
            return
        append_line(self.dir / "metrics.jsonl", json.dumps(record), what="the run's metrics")
        step, writer = record["step"], self.tensorboard
        for key, value in record.items():
            if writer is not None and key not in ("step", "epoch") and isinstance(value, (int, float)):
                writer.add_scalar(key, value, step)
        self._remember(record)

    def plot(self, *, force: bool = False) -> None:
        """loss_curve.png: training loss per step and, beside it, the kNN monitor per epoch.

        Redrawn at most every PLOT_INTERVAL_S unless `force` (the run's end): a drawing costs about 0.3 s, which
        at an epoch end every 2 s (CIFAR-10 on a GPU) took a tenth of the training time."""
        if not self.enabled or not self._curve or self._no_matplotlib:
            return
        if not force and time.monotonic() - self._plotted_at < PLOT_INTERVAL_S:
            return
        self._plotted_at = time.monotonic()
        try:
            import matplotlib
        except ImportError:
            self._no_matplotlib = True
            _note("matplotlib is not installed, so no loss_curve.png (pip install 'torchclr[plot]')")
            return

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2 if self._monitor else 1, figsize=(10 if self._monitor else 5, 3.5), squeeze=False)
        steps, losses = zip(*self._curve)
        axes[0][0].plot(steps, losses)
        axes[0][0].set(xlabel="step", ylabel="contrastive loss", title="pretraining loss")
        if self._monitor:
            epochs, accs = zip(*self._monitor)
            axes[0][1].plot(epochs, accs, marker="o")
            axes[0][1].set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor")
        fig.tight_layout()
        save_figure(fig, self.dir / "loss_curve.png")
        plt.close(fig)

    def checkpoint_path(self, epochs_done: int, step: int | None = None) -> Path:
        """The file for a checkpoint after `epochs_done` epochs, or mid-epoch at global `step`."""
        mid = f"-step-{step:08d}" if step is not None else ""
        return self.checkpoints / f"epoch-{epochs_done:04d}{mid}.safetensors"

    def _checkpoints(self) -> list[Path]:
        """torchclr's checkpoints, oldest first; other files there are ignored, with a note (once each)."""
        found = []
        for path in self.checkpoints.glob("*.safetensors"):
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and path.is_file():
                found.append(((int(match.group(1)), match.group(2) is not None, int(match.group(2) or 0)), path))
            elif path.name not in self._noted:
                self._noted.add(path.name)
                print(f"torchclr: note: ignoring {path} (not a checkpoint name torchclr writes)", file=sys.stderr)
        return [path for _, path in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        found = self._checkpoints()
        return found[-1] if found else None

    def ended(self) -> bool:
        """Whether the run's end was written: its encoder after its last checkpoint (a run killed between the two
        has not ended: its end, encoder and final report, is redone)."""
        encoder = self.dir / "encoder.safetensors"
        if not encoder.is_file():
            return False
        last = self.latest_checkpoint()
        return last is not None and encoder.stat().st_mtime_ns >= last.stat().st_mtime_ns

    def prune(self, keep: int) -> None:
        if not self.enabled or keep <= 0:
            return
        for old in self._checkpoints()[:-keep]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        """The final curves, and the TensorBoard files flushed."""
        self.plot(force=True)
        if self._tensorboard:
            self._tensorboard.close()


def _note(text: str) -> None:
    print(f"torchclr: note: {text}", file=sys.stderr, flush=True)
