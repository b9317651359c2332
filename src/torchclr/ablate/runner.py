"""What every ablation study shares: the budget presets, the labelled subset, one cell (a short pretraining
through `torchclr.pretrain` and a kNN evaluation), and the JSON-lines file that makes reruns skip finished cells."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torchclr.errors import UserError
from torchclr.options import check_seed
from torchclr.interrupt import Interrupted
from torchclr.writer import append_line, png_writer, signals_raise, write_atomically, write_json, write_text


@dataclass(frozen=True)
class Budget:
    """The scale of every cell: a class-balanced subset of the data, a backbone, and a short schedule."""

    name: str
    train_images: int
    test_images: int
    epochs: int
    batch_size: int
    seeds: tuple[int, ...]
    image_size: int = 32
    cifar_stem: bool = False
    head_dims: tuple[int, ...] = (32, 128, 2048)
    batch_sizes: tuple[int, ...] = (64, 256, 1024)
    epoch_grid: tuple[int, ...] = (2, 4)
    about: str = ""

    def describe(self) -> str:
        stem = "CIFAR stem" if self.cifar_stem else "ImageNet stem"
        return (f"ResNet-18 ({stem}) on {self.image_size} px views, {self.train_images:,} training and "
                f"{self.test_images:,} test images of the data (class-balanced, seeded), {self.epochs} epochs at "
                f"batch {self.batch_size}, seeds {', '.join(map(str, self.seeds))}; {self.about}")


BUDGETS = {
    "quick": Budget("quick", train_images=500, test_images=500, epochs=2, batch_size=100, seeds=(0,), image_size=16,
                    head_dims=(32, 2048), batch_sizes=(25, 100, 250), epoch_grid=(1, 3),
                    about="a first look: about a minute per cell on this project's 2 CPU cores while shared with other "
                          "jobs (load ~15), ten steps per cell; one seed, so read gaps of a few points as noise"),
    "default": Budget("default", train_images=2000, test_images=1000, epochs=5, batch_size=125, seeds=(0, 1, 2),
                      head_dims=(32, 128, 512, 2048), batch_sizes=(50, 125, 250, 500, 1000), epoch_grid=(3, 6),
                      about="sized for each study to finish within 60 minutes on 2 quiet CPU cores (measured on this project's "
                            "machine: 9 to 25 minutes a study, about 40 s a cell); three seeds for the headline cells"),
    "gpu": Budget("gpu", train_images=10000, test_images=2000, epochs=10, batch_size=512, seeds=(0, 1, 2),
                  cifar_stem=True, head_dims=(32, 128, 512, 2048), batch_sizes=(256, 512, 1024, 2048), epoch_grid=(10, 30),
                  about="sized for one 10-minute GPU call per study (benchmarks/gpu_ablate.sh) from the 27,118 pairs/s "
                        "measured for ResNet-18 at 32 px on one H200; docs/ablations.md has the arithmetic. Not yet run"),
}

# What every report says about BASE_SETTINGS beside the paper's recipe (ResNet-50, ImageNet, appendix B.1/B.9).
BASE_RECIPE_NOTE = (
    "Base recipe of every cell (a study changes a few keys): ResNet-18, the budget's stem and view size, random "
    "resized crop of scale 0.2-1 (paper: 0.08-1), colour distortion s = 0.5 (paper: 1.0 on ImageNet, 0.5 on CIFAR-10), "
    "no blur (paper: p = 0.5 on ImageNet, none on CIFAR-10), LARS at lr 3.0 x B/256 (paper: 0.3 x B/256, or "
    "0.075 x sqrt(B)), weight decay 1e-4 (paper: 1e-6), warm-up 0.5 epochs (paper: 10), temperature 0.1 (paper: 0.1 on "
    "ImageNet, 0.5 on CIFAR-10), 2-layer MLP head to 128-d; scored by kNN (paper: linear evaluation). The short schedules "
    "are why the lr is high, the warm-up short and the crops milder than the paper's.")

# Every cell starts from the quickstart's short-run recipe (docs/quickstart.md) at 32 px; a study changes a few keys.
BASE_SETTINGS: dict[str, Any] = {
    "arch": "resnet18", "blur_p": 0.0, "crop_scale": (0.2, 1.0), "jitter_strength": 0.5, "optimizer": "lars", "lr": 3.0,
    "lr_scaling": "linear", "weight_decay": 1e-4, "warmup_epochs": 0.5, "temperature": 0.1, "knn_every": 0,  # BASE_RECIPE_NOTE
    "grad_cache_chunk": "off", "keep_checkpoints": 1, "progress": False,
}


@dataclass(frozen=True)
class Cell:
    """One setting of a study: its name in the tables, the PretrainConfig keys it changes, what it is evaluated on.

    `headline` cells get every seed of the budget; the others the first only (a grid that would not fit otherwise)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    headline: bool = False
    evaluate_z: bool = False


@dataclass(frozen=True)
class Figures:
    """Where a study writes its PNGs (`folder`) and how its Markdown links them (`link` + file name)."""

    folder: Path
    link: str

    def png(self, study: str, budget: Budget, what: str) -> tuple[Path, str]:
        name = f"{study}-{budget.name}-{what}.png"
        return self.folder / name, f"{self.link}{name}"


@dataclass(frozen=True)
class Study:
    """One of the paper's studies: its cells at a budget, and its Markdown section from their results."""

    name: str
    paper: str
    cells: Callable[[Budget], list[Cell]]
    section: Callable[[list[dict[str, Any]], Budget, Figures], str]


def parse_seeds(text: str | None, budget: Budget) -> tuple[int, ...]:
    if text is None:
        return budget.seeds
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must list distinct seeds, got {text!r}")
    for seed in seeds:
        check_seed("--seeds", seed)
    return seeds


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}"


def prepare_subset(data: str, root: Path, budget: Budget, seed: int = 0, say: Callable[[str], Any] = print) -> Path:
    """A folder train/CLASS/*.png, test/CLASS/*.png of a class-balanced, seeded subset of `data`, written once. A file
    left out when listing, and a drawn image that cannot be decoded, are counted (one line a split), as pretraining
    skips them."""
    import torch

    from torchclr.data.skips import BadFile
    from torchclr.data.sources import open_images

    folder = root / f"subset-{budget.train_images}-{budget.test_images}"
    done = folder / "done.json"
    if done.exists():
        if json.loads(done.read_text())["data"] != data:
            raise UserError(f"{folder} was made from other data; use another --out for --data {data}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for split, wanted in (("train", budget.train_images), ("test", budget.test_images)):
        images = open_images(data, split)
        listed = len(images) + len(images.skipped)  # a file skipped when decoded is still in `images`
        if not images.labelled:
            raise UserError(f"--data {data}: the {split} split needs class sub-folders (labels) for the ablations")
        generator = torch.Generator().manual_seed(seed)
        per_class = -(-wanted // len(images.classes))
        labels = torch.tensor(images.labels)
        for label, name in enumerate(images.classes):
            members = (labels == label).nonzero().squeeze(1)
            chosen = members[torch.randperm(len(members), generator=generator)[:per_class]]
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for index in chosen.tolist():
                try:
                    pixels = images.image(index).permute(1, 2, 0).contiguous().numpy()
                except BadFile as bad:
                    images.skipped.add(bad)
                    continue
                write_atomically(folder / split / name / f"{index:06d}.png", png_writer(pixels),
                                 what="an image of the ablation subset", sync=False)  # all synced before done.json
        written = sum(1 for _ in (folder / split).rglob("*.png"))
        if images.skipped:
            say(f"subset of --data {data} ({split}): {images.skipped.summary(listed)}; first: {images.skipped.entries[0]}")
        largest = max(budget.batch_size, *budget.batch_sizes)
        if split == "train" and written < largest:
            raise UserError(f"--data {data}: {written} usable training images, fewer than the largest batch ({largest}) "
                            f"of --budget {budget.name}; use more images or a smaller --budget")
    os.sync()  # every PNG on disk before the record that says the subset is whole
    write_json(done, {"data": data}, what="the subset's record")
    return folder


def cell_key(cell: Cell, seed: int) -> str:
    return f"{cell.name}/seed{seed}"


def read_results(path: Path, say: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """The finished cells recorded in `path`. A line that is not a result (the last one, cut by a killed run) is
    left out with a note and, when `say` is given, removed from the file, so that the next append starts a line."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    kept = [line for line in lines if line.strip() and _is_result(line)]
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if dropped and say is not None:
        say(f"note: {path.name}: left out {dropped} line(s) that are not complete results (a run cut short?); "
            "those cells run again")
        write_text(path, "".join(line + "\n" for line in kept), what="ablation results")
    return [json.loads(line) for line in kept]


def _is_result(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("cell"), str) and isinstance(record.get("seed"), int)


def run_cell(cell: Cell, seed: int, budget: Budget, subset: Path, work: Path, device: str) -> dict[str, Any]:
    """Pretrain on the subset's train split with the cell's settings, then kNN top-1 on its test split (h, and z when
    asked). A run that diverges is a result too (the paper's table 5 has such settings): recorded, not fatal."""
    from torchclr.config import PretrainConfig
    from torchclr.guard import DivergedError
    from torchclr import pretrain
    from torchclr.transforms.ablation import AblationOps

    settings, ablation = AblationOps.split(
        {**BASE_SETTINGS, "data": str(subset / "train"), "image_size": budget.image_size, "cifar_stem": budget.cifar_stem,
         "epochs": budget.epochs, "batch_size": budget.batch_size, **cell.settings, "seed": seed, "device": device,
         "out_dir": str(work)})
    config = PretrainConfig(**settings)
    config.validate()
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted cell left behind
    start = time.perf_counter()
    result: dict[str, Any] = {"cell": cell.name, "seed": seed, "settings": cell.settings}
    try:
        pretrain(config, ablation=ablation)
        result.update(evaluate_cell(work / "encoder.safetensors", subset, device, cell.evaluate_z))
    except DivergedError as err:
        result["diverged"] = str(err)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints of a finished cell are not needed again
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def evaluate_cell(encoder_file: Path, subset: Path, device: str, evaluate_z: bool) -> dict[str, float]:
    """Weighted kNN top-1 on the frozen h of a trained encoder, and on z = g(h) when asked."""
    from torch import nn

    from torchclr.pretrained import load_encoder, load_head

    encoder, _, info = load_encoder(encoder_file)
    networks: dict[str, nn.Module] = {"knn_top1_h": encoder}
    if evaluate_z:
        networks["knn_top1_z"] = nn.Sequential(encoder, load_head(encoder_file, encoder))
    return knn_scores(networks, subset, info["config"].image_size, device)


def random_baseline(subset: Path, budget: Budget, out: Path, device: str) -> float:
    """kNN top-1 of the same network with random weights (seed 0): what a cell must beat to have learnt anything.
    Kept in OUT/random-BUDGET.json."""
    path = out / f"random-{budget.name}.json"
    if path.exists():
        return float(json.loads(path.read_text())["knn_top1_h"])
    import torch

    from torchclr.models import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder(BASE_SETTINGS["arch"], budget.image_size, budget.cifar_stem)
    score = knn_scores({"knn_top1_h": encoder}, subset, budget.image_size, device)["knn_top1_h"]
    write_json(path, {"knn_top1_h": score}, what="the random baseline")
    return score


def knn_scores(networks: dict[str, Any], subset: Path, image_size: int, device_name: str) -> dict[str, float]:
    """{name: weighted kNN top-1 (k = 200, T = 0.1, the monitor's)} of each network's output on the subset's test
    split against its train split, at the evaluation centre view."""
    from torchclr.evaluate.knn import accuracy, knn_predict
    from torchclr.evaluate.monitor import LabelledEval
    from torchclr.runtime import resolve_device

    device = resolve_device(device_name)
    labelled = LabelledEval.open(str(subset), image_size)
    scores = {}
    for key, network in networks.items():
        (train, train_labels), (test, test_labels) = labelled.features(network.to(device), device)
        predicted = knn_predict(train, train_labels, test, labelled.num_classes, device=device)
        scores[key] = round(accuracy(predicted, test_labels), 2)
    return scores


def _stopped_in(cell: Cell, seed: int, stop: BaseException, results_file: Path) -> Interrupted:
    """A signal during a cell (its pretraining, which saves a checkpoint and stops, or its evaluation) as one line
    for ablate: the cell's work is dropped, not resumed, so pretraining's "continue with --resume" would mislead."""
    signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
    return Interrupted(signum, f"stopped by {signal.Signals(signum).name} during cell {cell.name!r} seed {seed}, which "
                       f"is not recorded; the finished cells are in {results_file}; run the same command again to redo "
                       "this cell and go on")


def run_cells(cells: list[Cell], seeds: tuple[int, ...], budget: Budget, subset: Path, results_file: Path,
              device: str, say: Any = print) -> list[dict[str, Any]]:
    """Every (cell, seed) not yet in `results_file`, each appended to it as one JSON line when done; returns all."""
    finished = {cell_key(Cell(r["cell"]), r["seed"]) for r in read_results(results_file, say)}
    todo = [(cell, seed) for cell in cells for seed in (seeds if cell.headline else seeds[:1])
            if cell_key(cell, seed) not in finished]
    if len(finished):
        say(f"{results_file.name}: {len(finished)} cells done before, {len(todo)} to run")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    with signals_raise(f"ablation results {results_file} (run the same command again to go on)"):
        for number, (cell, seed) in enumerate(todo, start=1):
            try:
                result = run_cell(cell, seed, budget, subset, results_file.parent / "work", device)
            except (Interrupted, KeyboardInterrupt) as stop:
                raise _stopped_in(cell, seed, stop, results_file) from None
            append_line(results_file, json.dumps(result), what="ablation results", sync=True)  # a cut line: see read_results
            shown = ", ".join(f"{k} {v}" for k, v in result.items() if k.startswith("knn") or k in ("diverged", "seconds"))
            say(f"[{number}/{len(todo)}] {cell.name} seed {seed}: {shown}")
    return read_results(results_file)
