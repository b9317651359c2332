"""The Python side of benchmarks/gpu_reproduce.sh: a toy subset for SMOKE=1, which encoder file to evaluate, the
encoder in pieces that fit the GPU machine's file limits, and the summary (JSON + Markdown) of what the run left.

    python benchmarks/gpu_reproduce.py subset DATA FOLDER --train 200 --test 100
    python benchmarks/gpu_reproduce.py encoder RUN_DIR          # prints the file to evaluate, exit 1 if none
    python benchmarks/gpu_reproduce.py split FILE OUT --info PIECES.json   # FILE.part-00, -01, ... of at most 16 MiB
    python benchmarks/gpu_reproduce.py summary --run RUN_DIR --work WORK --out OUT --steps train=0 knn=0 ...
      (WORK holds knn.json, linear.json and pieces.json when those steps ran)
    python benchmarks/gpu_reproduce.py table --out OUT/recipe SUMMARY.json ...   # one row per run: recipe.json/.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PIECE_BYTES = 16 << 20  # the GPU machine returns files of at most 16 MiB


def make_subset(data: str, folder: Path, train: int, test: int) -> Path:
    """A class-balanced, seeded subset of `data` (train/ and test/ splits), through the ablations' own subset maker."""
    from torchclr.ablate.runner import Budget, prepare_subset

    budget = Budget("smoke", train_images=train, test_images=test, epochs=1, batch_size=min(train, 25), seeds=(0,),
                    batch_sizes=(min(train, 25),))
    return prepare_subset(data, folder, budget)


def encoder_to_evaluate(run: Path) -> Path | None:
    """The exported encoder, or, when training stopped before writing it, the newest training checkpoint."""
    exported = run / "encoder.safetensors"
    if exported.is_file():
        return exported
    checkpoints = sorted((run / "checkpoints").glob("epoch-*.safetensors")) if (run / "checkpoints").is_dir() else []
    return checkpoints[-1] if checkpoints else None


def split_file(path: Path, out: Path, piece_bytes: int = PIECE_BYTES) -> dict[str, Any]:
    """Write `path` as numbered pieces of at most `piece_bytes` into `out`; returns the pieces, the sha256 of the
    whole and the one-line command that joins them."""
    digest, pieces = hashlib.sha256(), []
    with path.open("rb") as source:
        while chunk := source.read(piece_bytes):
            digest.update(chunk)
            piece = out / f"{path.name}.part-{len(pieces):02d}"
            piece.write_bytes(chunk)
            pieces.append(piece.name)
    joined = path.name
    info = {"file": joined, "bytes": path.stat().st_size, "sha256": digest.hexdigest(), "pieces": pieces,
            "join": f"cat {joined}.part-* > {joined} && sha256sum {joined}"}
    (out / f"{joined}.sha256").write_text(f"{info['sha256']}  {joined}\n")
    return info


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a killed run
    return [r for r in records if isinstance(r, dict)]


def _top1(path: Path) -> float | None:
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return float(results["SimCLR"]["top1"]) if "SimCLR" in results else None


def _environment() -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    return {"gpu": gpu, "torch": torch.__version__}


def summarise(run: Path, work: Path, steps: dict[str, int], data: str, train_seconds: float, smoke: bool,
              pieces: dict[str, Any] | None, label: str = "") -> dict[str, Any]:
    """What the run produced, read from its files: nothing is assumed about steps that failed."""
    records = _metrics(run)
    epochs = [r for r in records if "epoch_loss" in r]
    logged = [r["images_per_s"] for r in records if "images_per_s" in r]
    budget = next((r for r in records if "time_budget_used_s" in r), None)
    config_file = run / "config.yaml"
    config: dict[str, Any] = {}
    if config_file.is_file():
        import yaml

        config = yaml.safe_load(config_file.read_text()) or {}
    steps_done = epochs[-1]["step"] if epochs else 0
    training_s = budget["time_budget_used_s"] if budget else float(train_seconds)
    batch = config.get("batch_size")
    summary: dict[str, Any] = {
        "kind": "smoke (toy size, measures nothing)" if smoke else "reproduction",
        "label": label,
        "data": data,
        **_environment(),
        "steps": {name: ("ok" if rc == 0 else f"exit {rc}") for name, rc in steps.items()},
        "epochs": epochs[-1]["epoch"] if epochs else 0,
        "optimizer_steps": steps_done,
        "batch_size": batch,
        "training_minutes": round(training_s / 60, 2),
        "pairs_per_s_logged_median": round(statistics.median(logged)) if logged else None,
        "pairs_per_s_overall": round(steps_done * batch / training_s) if batch and training_s > 0 and steps_done else None,
        "knn_curve": [{"epoch": r["epoch"], "knn_top1": r["knn_top1"]} for r in epochs if "knn_top1" in r],
        "final_knn_top1": _top1(work / "knn.json") if (work / "knn.json").is_file() else _last_monitor(epochs),
        "final_linear_top1": _top1(work / "linear.json"),
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    linear = work / "linear.json"
    if linear.is_file():
        result = json.loads(linear.read_text())["SimCLR"]
        summary["linear_protocol"] = {k: result[k] for k in ("epochs", "batch_size", "lr") if k in result}
    if config:
        summary["config"] = {k: config.get(k) for k in ("arch", "cifar_stem", "image_size", "batch_size", "lr",
                                                          "lr_scaling", "optimizer", "weight_decay", "temperature",
                                                          "jitter_strength", "crop_scale", "warmup_epochs", "time_budget")}
    if pieces:
        summary["encoder_pieces"] = pieces
    return summary


def _last_monitor(epochs: list[dict[str, Any]]) -> float | None:
    """The kNN the run's monitor logged after its last step (the same protocol as `evaluate --protocol knn` with
    the full bank), where no separate evaluation ran."""
    return epochs[-1].get("knn_top1") if epochs else None


def _shown(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def markdown(summary: dict[str, Any]) -> str:
    curve = ", ".join(f"{p['epoch']}: {p['knn_top1']:.2f}" for p in summary["knn_curve"]) or "-"
    rows = [("kind", summary["kind"]), ("GPU", summary["gpu"]), ("torch", summary["torch"]), ("data", summary["data"] or "-"),
            ("steps", ", ".join(f"{k} {v}" for k, v in summary["steps"].items())),
            ("epochs", _shown(summary["epochs"])), ("optimizer steps", _shown(summary["optimizer_steps"])),
            ("training minutes", _shown(summary["training_minutes"])),
            ("pairs/s (median of the logged)", _shown(summary["pairs_per_s_logged_median"])),
            ("pairs/s (steps x batch / training time)", _shown(summary["pairs_per_s_overall"])),
            ("kNN top-1 % by epoch (k = 200)", curve),
            ("final kNN top-1 % (test)", _shown(summary["final_knn_top1"])),
            ("final linear top-1 % (test)", _shown(summary["final_linear_top1"]))]
    if "linear_protocol" in summary:
        p = summary["linear_protocol"]
        rows.append(("linear protocol", f"{p.get('epochs', 0):.0f} epochs, batch {p.get('batch_size', 0):.0f}, lr {p.get('lr', 0):.3g}"))
    lines = ["# torchclr: SimCLR on CIFAR-10 on one GPU (benchmarks/gpu_reproduce.sh)", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if "encoder_pieces" in summary:
        pieces = summary["encoder_pieces"]
        lines += ["", f"Encoder in {len(pieces['pieces'])} pieces; join with `{pieces['join']}` "
                      f"(sha256 {pieces['sha256']})."]
    return "\n".join(lines) + "\n"


def table(summaries: list[dict[str, Any]], title: str) -> tuple[list[dict[str, Any]], str]:
    """One row per run (its label, epochs, minutes, pairs/s, final kNN), best kNN first; runs without one last."""
    rows = [{"run": s["label"], "epochs": s["epochs"], "training_minutes": s["training_minutes"],
             "pairs_per_s": s["pairs_per_s_overall"], "knn_top1": s["final_knn_top1"],
             "failed": {k: v for k, v in s["steps"].items() if v != "ok"}} for s in summaries]
    rows.sort(key=lambda row: -(row["knn_top1"] if row["knn_top1"] is not None else -1.0))
    lines = [f"# {title}", "", f"{summaries[0]['gpu'] if summaries else '-'}, torch {summaries[0]['torch'] if summaries else '-'}", "",
             "| run (options beside the preset) | epochs | minutes | pairs/s | kNN top-1 % | failed steps |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['run']} | {r['epochs']} | {_shown(r['training_minutes'])} | {_shown(r['pairs_per_s'])} | "
              f"{_shown(r['knn_top1'])} | {', '.join(f'{k} {v}' for k, v in r['failed'].items()) or '-'} |" for r in rows]
    return rows, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    subset = commands.add_parser("subset")
    subset.add_argument("data")
    subset.add_argument("folder", type=Path)
    subset.add_argument("--train", type=int, default=200)
    subset.add_argument("--test", type=int, default=100)
    encoder = commands.add_parser("encoder")
    encoder.add_argument("run", type=Path)
    split = commands.add_parser("split")
    split.add_argument("file", type=Path)
    split.add_argument("out", type=Path)
    split.add_argument("--info", type=Path, required=True, help="JSON file to describe the pieces in (for the summary)")
    summary = commands.add_parser("summary")
    summary.add_argument("--run", type=Path, required=True)
    summary.add_argument("--work", type=Path, required=True)
    summary.add_argument("--out", type=Path, required=True)
    summary.add_argument("--data", default="")
    summary.add_argument("--train-seconds", type=float, default=0.0)
    summary.add_argument("--smoke", default="0")
    summary.add_argument("--steps", nargs="*", default=[], help="NAME=EXIT_CODE of each step that ran")
    summary.add_argument("--label", default="", help="what this run is (a recipe cell, a study)")
    rows = commands.add_parser("table")
    rows.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    rows.add_argument("--title", default="runs")
    rows.add_argument("summaries", nargs="*", type=Path)
    args = parser.parse_args(argv)

    if args.command == "subset":
        from torchclr.errors import UserError

        try:
            print(make_subset(args.data, args.folder, args.train, args.test))
        except UserError as err:
            print(f"subset: {err}", file=sys.stderr)
            return 2
    elif args.command == "encoder":
        found = encoder_to_evaluate(args.run)
        if found is None:
            return 1
        print(found)
    elif args.command == "split":
        info = split_file(args.file, args.out)
        args.info.write_text(json.dumps(info, indent=2))
        print(f"{args.file.name}: {len(info['pieces'])} pieces in {args.out}; join: {info['join']}")
    elif args.command == "table":
        found = [json.loads(path.read_text()) for path in args.summaries if path.is_file()]
        rows, text = table(found, args.title)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
        print(text)
    else:
        steps = {name: int(rc) for name, _, rc in (item.partition("=") for item in args.steps)}
        pieces_file = args.work / "pieces.json"
        pieces = json.loads(pieces_file.read_text()) if pieces_file.is_file() else None
        result = summarise(args.run, args.work, steps, args.data, args.train_seconds, args.smoke == "1", pieces, args.label)
        (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        text = markdown(result)
        (args.out / "summary.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
