"""``mlp-torch bench``: training-step speed of the three gradient paths, and the data path against a DataLoader."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import HelpFormatter
from ._flags import add_data_arguments, data_options_from_args
from .json_output import add_json_argument, report_stream, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time the training step of each backend and the data path; --json for the numbers",
        description=(
            "Time one SGD training step (forward + backward + update, float32, batches of 128 and 512) of the\n"
            "linear softmax classifier (D→C) and the sigmoid MLP (D-512-512-C) with each gradient path,\n"
            "interleaving the variants: medians after warm-up with their min and interquartile range, and\n"
            "the ratio to builtin round by round (CPU time of the calling thread with --threads 1, else the\n"
            "wall clock); the bytes each keeps for backward; the MLP step's FLOP rate against bare torch.mm on\n"
            "the same shapes; and one epoch of batches from our on-device loader against torchvision's\n"
            "ToTensor/Normalize through a DataLoader over the same images (at the largest batch size).\n"
            "D and C come from the data (3072 and 3 for the default synthetic CIFAR-shaped data)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (same rows): under a minute on 2 CPU cores")
    parser.add_argument("--compile", action="store_true", help="also time every step under torch.compile")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="instead: whole training epochs of the default cat/dog job against the GEMM limit and "
        "scripts/plain_pytorch_baseline.py (the JPEGs in --data-root or ../shared/data/cifar10-jpg, "
        "else synthetic images); --quick: 5 epochs, under two minutes",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="--end-to-end: epochs of each side (default 10, or 5 with --quick)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="R",
        help="rounds per MLP variant (the softmax gets 20x as many; default 100, or 40 with --quick)",
    )
    parser.add_argument(
        "--batch-sizes",
        "--batch-size",
        dest="batch_sizes",
        type=int,
        nargs="+",
        default=[128, 512],
        metavar="N",
        help="samples per training step, one set of rows each; the data path uses the largest (default: 128 512)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes (default 0; --end-to-end: the baseline tries 0 up to the CPU count "
        "and keeps the fastest)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models, the batch and the data")
    add_json_argument(
        parser,
        '{"device", "torch", "threads", "clock", "steps": [{"ms", "ms_min", "ms_iqr", ...}], "gemm_efficiency", '
        '"data": {...}}; with --end-to-end '
        '{"end_to_end": {"epoch_seconds", "gemm_limit_epoch_seconds", "gemm_fraction", '
        '"plain_pytorch_epoch_seconds", "vs_plain_pytorch", "accuracy", "plain_pytorch_accuracy", ...}}',
    )
    add_data_arguments(parser, dataset="synthetic")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import BenchSettings, format_report, run_benchmark
    from ..data import load_data
    from ..errors import UsageError
    from ..utils import select_device, set_seed

    for flag, value, low in (
        ("--rounds", args.rounds, 1),
        ("--batch-sizes", min(args.batch_sizes), 1),
        ("--workers", args.workers, 0),
        ("--threads", args.threads, 0),
        ("--epochs", args.epochs, 1),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    set_seed(args.seed)
    if args.end_to_end:
        return run_end_to_end(args, device)
    settings = BenchSettings.quick(args.compile) if args.quick else BenchSettings(compile=args.compile)
    settings.batch_sizes = tuple(dict.fromkeys(args.batch_sizes))  # in the order given, each once
    if args.rounds is not None:
        settings.rounds = {"softmax": 20 * args.rounds, "mlp": args.rounds}
    bundle = load_data(data_options_from_args(args, seed=args.seed))
    report = run_benchmark(bundle, device, settings, workers=args.workers or 0, seed=args.seed)
    print(format_report(report), file=report_stream(args.json))
    write_json(args.json, report)
    return 0


def run_end_to_end(args: argparse.Namespace, device: Any) -> int:
    from ..training.bench_end_to_end import EndToEndSettings, format_end_to_end
    from ..training.bench_end_to_end import run_end_to_end as measure

    settings = EndToEndSettings.quick() if args.quick else EndToEndSettings()
    if args.epochs is not None:
        settings.epochs = args.epochs
    settings.synthetic_train_per_class = args.synthetic_train_per_class
    settings.synthetic_test_per_class = args.synthetic_test_per_class
    settings.synthetic_image_size = args.image_size
    settings.baseline_workers = None if args.workers is None else [args.workers]
    report = measure(args.data_root, device, settings, seed=args.seed)
    print(format_end_to_end(report), file=report_stream(args.json))
    write_json(args.json, report)
    return 0
