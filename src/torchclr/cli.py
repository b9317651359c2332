"""The `torchclr` command: `pretrain` and `evaluate`. Bad input ends in one line naming the culprit."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn, Sequence

from torchclr import config as config_module
from torchclr.errors import UserError


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
        "evaluate", help="linear probe or kNN of a trained encoder on labelled data",
        description="Evaluate the frozen representation h of a checkpoint (training checkpoint or encoder.safetensors).",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors file written by torchclr pretrain")
    evaluate.add_argument("--protocol", choices=("linear", "knn"), default="linear", help="linear probe on cached h, or weighted kNN (default: linear)")
    evaluate.add_argument("--data", help="labelled data with train/test splits (default: the data the checkpoint was trained on)")
    evaluate.add_argument("--compare-random", action=argparse.BooleanOptionalAction, default=True,
                          help="also evaluate the same architecture with random weights (default: on)")
    evaluate.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    evaluate.add_argument("--knn-k", type=int, default=200, help="neighbours for --protocol knn (default: 200)")
    evaluate.add_argument("--knn-temperature", type=float, default=0.1, help="kNN weight temperature (default: 0.1)")
    evaluate.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100/stl10")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    return parser


def _pretrain(args: argparse.Namespace) -> None:
    from torchclr.train import pretrain

    pretrain(config_module.resolve(args), resume=args.resume)


def _evaluate(args: argparse.Namespace) -> None:
    from torchclr.evaluate.monitor import LabelledEval, evaluate_encoders, format_table, random_twin
    from torchclr.pretrained import load_encoder
    from torchclr.train import resolve_device

    if args.knn_k <= 0 or args.knn_temperature <= 0:
        raise UserError("--knn-k and --knn-temperature must be > 0")
    device = resolve_device(args.device)
    encoder, meta = load_encoder(args.checkpoint)
    config = meta["config"]
    spec = args.data or config.eval_data or config.data
    labelled = LabelledEval.open(spec, config.image_size, args.download, test_split=config.eval_split)
    encoder = encoder.to(device)
    encoders = {f"SimCLR ({args.checkpoint})"[:28]: encoder}
    if args.compare_random:
        encoders["random weights"] = random_twin(encoder, config)
    results = evaluate_encoders(labelled, encoders, device, args.protocol, args.knn_k, args.knn_temperature)
    print(format_table(results, args.protocol, spec))
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
    except KeyboardInterrupt:
        print("torchclr: interrupted (the last epoch checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
