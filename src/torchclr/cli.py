"""The `torchclr` command: `pretrain` and `evaluate`. Bad input ends in one line naming the culprit."""

from __future__ import annotations

import argparse
import json
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
        "pretrain", help="pretrain an encoder with SimCLR",
        description="Pretrain a ResNet with SimCLR. With no options: a short run on the CIFAR-10 sample shipped with "
        "torchclr, ending with a linear-probe table against random weights. Every option is also a YAML key for --config.",
    )
    config_module.add_arguments(pretrain)

    evaluate = commands.add_parser(
        "evaluate", help="linear probe, kNN or fine-tuning of a trained encoder on labelled data (its own or another: transfer)",
        description="Evaluate the encoder of a checkpoint (training checkpoint or encoder.safetensors): its frozen "
        "representation h (linear, knn) or the whole encoder fine-tuned on a share of the labels (finetune). "
        "Give --data another labelled data set to measure transfer.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors file written by torchclr pretrain")
    evaluate.add_argument("--protocol", choices=("linear", "knn", "finetune"), default="linear",
                          help="linear probe on cached h, weighted kNN, or fine-tuning the whole encoder on --label-fraction "
                          "of the training labels (the paper's semi-supervised protocol) (default: linear)")
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
    evaluate.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    evaluate.add_argument("--knn-k", type=int, default=200, help="neighbours for --protocol knn (default: 200)")
    evaluate.add_argument("--knn-temperature", type=float, default=0.1, help="kNN weight temperature (default: 0.1)")
    evaluate.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100/stl10")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    return parser


def _pretrain(args: argparse.Namespace) -> None:
    config = config_module.resolve(args)  # before importing torch, so that option errors answer at once
    from torchclr.train import pretrain

    pretrain(config, resume=args.resume)


def _evaluate(args: argparse.Namespace) -> None:
    from torchclr.evaluate.finetune import FinetuneSettings
    from torchclr.evaluate.monitor import LabelledEval, evaluate_encoders, format_table, random_twin
    from torchclr.pretrained import load_encoder
    from torchclr.train import resolve_device

    if args.knn_k <= 0 or args.knn_temperature <= 0:
        raise UserError("--knn-k and --knn-temperature must be > 0")
    finetune_settings = FinetuneSettings(args.label_fraction, args.finetune_epochs, seed=args.seed)
    device = resolve_device(args.device)
    encoder, meta = load_encoder(args.checkpoint)
    config = meta["config"]
    spec = args.data or config.eval_data or config.data
    test_split = args.eval_split or (config.eval_split if not args.data else "test")
    labelled = LabelledEval.open(spec, config.image_size, args.download, test_split=test_split)
    encoder = encoder.to(device)
    encoders = {"SimCLR": encoder}
    if args.compare_random:
        encoders["random weights"] = random_twin(encoder, config)
    results = evaluate_encoders(labelled, encoders, device, args.protocol, args.knn_k, args.knn_temperature, finetune_settings)
    what = f"fine-tuning on {args.label_fraction:.3g} of the labels" if args.protocol == "finetune" else f"{args.protocol} evaluation"
    print(format_table(results, f"{what} of {args.checkpoint}", labelled))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        {"pretrain": _pretrain, "evaluate": _evaluate}[args.command](args)
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
