"""The `torchclr` command: `pretrain`, `evaluate`, `embed`, `neighbors`, `export`, `report`, `ablate`. Bad input ends in one line
naming the culprit."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import NoReturn, Sequence

from torchclr import config as config_module
from torchclr.errors import UserError
from torchclr.interrupt import Interrupted


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage is long) and points to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="torchclr", description="SimCLR: contrastive pretraining of image encoders, and their evaluation.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pretrain = commands.add_parser(
        "pretrain", help="pretrain an encoder with SimCLR", usage="%(prog)s [--config PRESET_OR_FILE] [--resume [CHECKPOINT]] [options]",
        description="Pretrain a ResNet with SimCLR. With no options: a short run on the CIFAR-10 sample shipped with "
        "torchclr, ending with an evaluation table against random weights (--final-protocol). Every option is also a YAML key for --config.",
    )
    config_module.add_arguments(pretrain)

    evaluate = commands.add_parser(
        "evaluate", help="linear evaluation, logistic regression, kNN or fine-tuning of a trained encoder on labelled data (its own or another: transfer)",
        description="Evaluate the encoder of a checkpoint (training checkpoint or encoder.safetensors): its frozen "
        "representation h (linear, logreg, knn) or the whole encoder fine-tuned on a share of the labels (finetune). "
        "Give --data another labelled data set to measure transfer.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors file written by torchclr pretrain")
    evaluate.add_argument("--protocol", choices=("linear", "logreg", "knn", "finetune"), default="linear",
                          help="linear: the paper's linear evaluation, a linear layer trained by SGD on the frozen h of "
                          "random crops (many passes of the encoder); logreg: L-BFGS logistic regression on cached h "
                          "(the paper's transfer protocol, one pass); knn: weighted kNN; finetune: the whole encoder "
                          "on --label-fraction of the training labels (the paper's semi-supervised protocol) (default: linear)")
    evaluate.add_argument("--linear-epochs", type=int, default=None,
                          help="for --protocol linear: epochs (default: 90, the paper's, from 50,000 training images; "
                          "proportionally fewer below, at least 15)")
    evaluate.add_argument("--linear-batch-size", type=int, default=None,
                          help="for --protocol linear: batch (default: 4096, the paper's, or the largest power of two "
                          "that gives an epoch 32 steps)")
    evaluate.add_argument("--linear-lr", type=float, default=0.1,
                          help="for --protocol linear: base learning rate, times batch / 256 (default: 0.1, the paper's)")
    evaluate.add_argument("--linear-weight-decay", type=float, default=0.0,
                          help="for --protocol linear: weight decay of the layer (default: 0, the paper's)")
    evaluate.add_argument("--label-fraction", type=float, default=0.1,
                          help="for --protocol finetune: class-balanced share of the training labels to use, e.g. 0.01 or 0.1 (default: 0.1)")
    evaluate.add_argument("--finetune-epochs", type=int, default=None,
                          help="for --protocol finetune: epochs over the labelled share (default: the paper's, 60 for 1%% and 30 for 10%%)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the labelled share and of fine-tuning (default: 0)")
    evaluate.add_argument("--data", help="labelled data with train/test splits (default: the data the checkpoint was trained on)")
    evaluate.add_argument("--eval-split", help="split of the labelled data to report on (default: the checkpoint's "
                          "--eval-split for its own data, 'test' for other --data)")
    evaluate.add_argument("--compare-random", action=argparse.BooleanOptionalAction, default=True,
                          help="also evaluate the same architecture with random weights (default: on)")
    evaluate.add_argument("--compare", action="append", choices=("init",), default=[],
                          help="init: also evaluate the weights the run started from (its --init), to see whether "
                          "pretraining beat its start")
    evaluate.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    evaluate.add_argument("--knn-k", type=int, default=200, help="neighbours for --protocol knn (default: 200)")
    evaluate.add_argument("--knn-temperature", type=float, default=0.1, help="kNN weight temperature (default: 0.1)")
    evaluate.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100/stl10, and "
                          "--compare init fetch the run's --init imagenet / timm weights")
    evaluate.add_argument("--json", help="also write the results to this JSON file")

    embed = commands.add_parser(
        "embed", help="write h (or z) of every image of a data set to .npy + .csv or .parquet",
        description="Embed every image of a folder, zip or torchvision set with a trained encoder, streamed in batches "
        "(at the encoder's evaluation centre view). An interrupted run continues where it stopped when run again.",
    )
    embed.add_argument("--checkpoint", required=True, help="a .safetensors file written by torchclr pretrain")
    embed.add_argument("--data", required=True, help="a folder (class sub-folders give labels), a .zip of one, cifar10:DIR, ... or 'sample'")
    embed.add_argument("--split", default="train", help="sub-folder / split of --data (a folder without split sub-folders is embedded whole) (default: train)")
    embed.add_argument("--out", required=True, help="FILE.npy (with FILE.csv of names and labels) or FILE.parquet (the parquet extra); FILE.json describes it")
    embed.add_argument("--projection", action="store_true", help="write z = g(h) of the projection head instead of h")
    embed.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    embed.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: from the core count)")
    embed.add_argument("--device", default="auto", help="'auto' (cuda when present), 'cpu', 'cuda', ...")
    embed.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast precision (default: fp32)")
    embed.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100/stl10")
    embed.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar (default: on)")

    neighbors = commands.add_parser(
        "neighbors", help="the nearest images by cosine similarity in the output of torchclr embed",
        description="Find the -k nearest vectors of embeddings written by torchclr embed, for an image file, a row of "
        "the embeddings, or every row of other embeddings (then, with labels, the share of neighbours of the query's class).",
    )
    neighbors.add_argument("--embeddings", required=True, help="the .npy or .parquet file written by torchclr embed")
    query = neighbors.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="an image file, embedded with the checkpoint that made --embeddings")
    query.add_argument("--index", type=int, help="a row of --embeddings (itself excluded from its neighbours)")
    query.add_argument("--query-embeddings", help="every row of these embeddings (e.g. the test split) against --embeddings")
    neighbors.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    neighbors.add_argument("--checkpoint", help="for --query: the checkpoint (default: the one that made --embeddings)")
    neighbors.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                           help="exact search on --device in chunks (torch) or with faiss (the faiss extra) (default: torch)")
    neighbors.add_argument("--device", default="auto", help="device of the torch search (default: auto)")
    neighbors.add_argument("--out", help="write every neighbour to this CSV")
    neighbors.add_argument("--grid", help="write a PNG contact sheet of the (first 8) queries and their neighbours")

    export = commands.add_parser(
        "export", help="write the encoder as ONNX, TorchScript or a torchvision state dict, with a JSON of its input",
        description="Export the encoder of a checkpoint; FILE.json beside it describes the preprocessing. The file is "
        "checked against PyTorch on 8 images (ONNX with onnxruntime, when installed).",
    )
    export.add_argument("--checkpoint", required=True, help="a .safetensors file written by torchclr pretrain")
    export.add_argument("--format", required=True, help="onnx, torchscript, torchvision (a torchvision --arch: the "
                        "model's state dict, which a ResNet's detection / segmentation body loads, docs/transfer.md) or "
                        "timm (a timm:NAME --arch: the state dict of timm.create_model(NAME, num_classes=0))")
    export.add_argument("--out", help="the file to write; its suffix must fit --format: .onnx (onnx), .pt (torchscript), "
                        ".safetensors, .pth or .pt (torchvision, timm; .pth/.pt are torch.save pickles) (default: beside the "
                        "checkpoint, CHECKPOINT.FORMAT.onnx / .pt / .safetensors)")

    report = commands.add_parser(
        "report", help="one offline HTML page of what a run learned: curves, views, map, per-class accuracy, neighbours",
        description="Write RUN_DIR/report/index.html with its PNGs: loss / lr / kNN curves, the view pairs of the first "
        "training step, a 2-D map of test embeddings (UMAP with the report extra, else PCA), per-class kNN accuracy and "
        "nearest-neighbour examples. Unlabelled runs show what their training images allow.",
    )
    report.add_argument("run_dir", help="the --out-dir of a torchclr pretrain run")
    report.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    report.add_argument("--max-points", type=int, default=2000, help="images on the 2-D map (default: 2000)")

    from torchclr.ablate import BUDGETS, STUDIES

    ablate = commands.add_parser(
        "ablate", help="re-check the paper's studies at small scale (augmentation pairs, colour strength, head, loss, batch x epochs)",
        description="Run a study of the SimCLR paper as short seeded pretrainings on a subset of labelled data, scored "
        "by kNN top-1, and write a Markdown report with plots beside the paper's numbers. Finished cells are kept in "
        "OUT/STUDY-BUDGET.jsonl and skipped when run again. See docs/ablations.md.",
    )
    ablate.add_argument("study", choices=(*STUDIES, "all"), help="the study, or all of them")
    ablate.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                        help="quick: a first look, about a minute per cell on 2 CPU cores; default: 9 to 25 minutes a study on 2 "
                        "quiet CPU cores (all five: about 75 minutes); gpu: 10,000 CIFAR-10 images with the CIFAR stem, sized for one "
                        "10-minute GPU run per study (default: default)")
    ablate.add_argument("--seeds", help="comma-separated seeds (default: the budget's; every seed runs the headline cells, "
                        "the first alone the rest of a grid)")
    ablate.add_argument("--data", default="sample", help="labelled data with train/test splits: a folder or zip "
                        "(e.g. cifar10-jpeg.zip), cifar10:DIR, or 'sample' for a quick look (default: sample)")
    ablate.add_argument("--out", default="runs/ablate", help="folder for the subset and the results (default: runs/ablate)")
    ablate.add_argument("--report", help="the Markdown report to write; its PNGs go to the folder of its name beside it "
                        "(default: OUT/ablations.md)")
    ablate.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    ablate.add_argument("--report-only", action="store_true", help="run nothing: write the report from the results in OUT")
    return parser


def _pretrain(args: argparse.Namespace) -> None:
    config = config_module.resolve(args)  # before importing torch, so that option errors answer at once
    from torchclr.train import pretrain

    pretrain(config, resume=args.resume)


def _evaluate(args: argparse.Namespace) -> None:
    from torchclr.evaluate import FinetuneSettings, LinearSettings, evaluate
    from torchclr.writer import check_output, write_json

    finetune = FinetuneSettings(args.label_fraction, args.finetune_epochs, seed=args.seed)
    linear = LinearSettings(args.linear_epochs, args.linear_batch_size, args.linear_lr, args.linear_weight_decay, args.seed)
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint])  # before the evaluation, not after it
    done = evaluate(args.checkpoint, protocol=args.protocol, data=args.data, eval_split=args.eval_split,
                    compare_random=args.compare_random, compare_init="init" in args.compare, device=args.device, knn_k=args.knn_k,
                    knn_temperature=args.knn_temperature, linear=linear, finetune=finetune, download=args.download)
    print(done.table)
    if args.json:
        write_json(args.json, done.results, what="the results (--json)")


def _embed(args: argparse.Namespace) -> None:
    from torchclr.embed import embed
    from torchclr.options import check_number

    check_number("--batch-size", args.batch_size, low=0, low_open=True)
    check_number("--workers", args.workers, low=0)

    meta = embed(args.checkpoint, args.data, args.out, split=args.split, projection=args.projection,
                 batch_size=args.batch_size, workers=args.workers, device=args.device, precision=args.precision,
                 download=args.download, progress=args.progress)
    skipped = f"; {len(meta['skipped'])} unreadable images skipped (listed in the .json)" if meta["skipped"] else ""
    print(f"wrote {meta['count']:,} {meta['dim']}-d {meta['what']} vectors of {meta['origin']} to {args.out}{skipped}")


def _neighbors(args: argparse.Namespace) -> None:
    from torchclr.neighbors import search
    from torchclr.options import check_number

    check_number("-k", args.k, low=0, low_open=True)
    check_number("--index", args.index, low=0)

    print(search(args.embeddings, args.k, query=args.query, index=args.index, query_embeddings=args.query_embeddings,
                 checkpoint=args.checkpoint, backend=args.backend, device=args.device, out=args.out, grid=args.grid))


def _export(args: argparse.Namespace) -> None:
    from torchclr.export import export

    done = export(args.checkpoint, args.format, args.out)
    check = ("not checked (pip install 'torchclr[onnx]' for onnxruntime)" if done.max_abs_diff is None
             else f"max |difference| from PyTorch on 8 images: {done.max_abs_diff:.2e}")
    print(f"wrote {done.path} and {done.description}; {check}")


def _report(args: argparse.Namespace) -> None:
    from torchclr.options import check_number
    from torchclr.report import build_report

    check_number("--max-points", args.max_points, low=2)

    print(f"wrote {build_report(args.run_dir, args.device, args.max_points)}")


def _ablate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from torchclr.ablate import BUDGETS, STUDIES, ablate
    from torchclr.ablate.runner import parse_seeds

    budget = BUDGETS[args.budget]
    studies = list(STUDIES) if args.study == "all" else [args.study]
    out = Path(args.out)
    report = Path(args.report) if args.report else out / "ablations.md"
    command = "torchclr " + shlex.join(args.argv)
    written = ablate(studies, budget, parse_seeds(args.seeds, budget), args.data, out, report, args.device, command,
                     run=not args.report_only)
    print(f"wrote {written}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the report of `ablate` names the command that made it
    try:
        {"pretrain": _pretrain, "evaluate": _evaluate, "embed": _embed, "neighbors": _neighbors, "export": _export,
         "report": _report, "ablate": _ablate}[args.command](args)
    except UserError as err:
        print(f"torchclr: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"torchclr: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("torchclr: interrupted (the last epoch checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
