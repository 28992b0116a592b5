"""``mlp-torch compare``: the three gradient paths (and finite differences) on one batch, side by side."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from ..utils import DTYPES
from ._common import HelpFormatter
from ._flags import add_data_arguments, add_model_arguments, data_options_from_args, model_kwargs_from_args
from .json_output import add_json_argument, report_stream, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare builtin, custom and manual gradients (and finite differences) on one batch",
        description=(
            "On one standardised training batch, compute the gradient of every parameter with the three\n"
            "backends (builtin: PyTorch ops + autograd; custom: our autograd Functions; manual: the\n"
            "hand-written chain rule) and, in float64, with centred finite differences on a random sample of\n"
            "entries. Prints per parameter and pair: shape, max |Δ|, max relative error\n"
            "|a − b| / max(1e-8, |a| + |b|), the error relative to the tensor's scale, and a verdict.\n"
            "Tolerances: backends 1e-10 (max rel, float64) or 1e-5 (scaled, float32); finite differences\n"
            "1e-5 (max rel). Exits 1 when any pair exceeds its tolerance.\n\n"
            "The perceptron starts at zero weights, where every prediction is a tie; compare gives it small\n"
            "random weights first so that its update is not trivially zero.\n\n"
            "--output sigmoid (the forward-pass slide's one output unit) is for two classes: without\n"
            "--classes, the synthetic data then have two (class0,class1)."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, names=("model", "hidden", "activation", "output"))  # every backend, no --backend
    add_data_arguments(parser, dataset="synthetic")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float64",
        help="parameter and input dtype; finite differences run in float64 only",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="samples in the batch")
    parser.add_argument(
        "--fd-samples",
        type=int,
        default=10,
        metavar="K",
        help="entries per parameter checked with finite differences (0 = none)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation, the batch and the sampled entries"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (cuda, then mps, then cpu)")
    add_json_argument(parser, '{"ok": bool, "rows": [{"param", "pair", "max_abs", "max_rel", "ok", ...}]}')
    parser.set_defaults(func=run)


def load_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]:
    """A seeded random training batch, standardised with the training split's statistics.

    Returns:
        x (B, in_features) float32 on the CPU, y (B,) int64, the loss class weights that
        ``--balance weights`` asks for (or ``None``), and the class names.
    """
    from ..data import Standardizer, balance_weights, load_data

    opts = data_options_from_args(args, seed=args.seed)
    if args.output == "sigmoid" and opts.dataset == "synthetic" and opts.classes is None:
        opts = dataclasses.replace(opts, classes=["class0", "class1"])  # one sigmoid unit: two classes
    bundle = load_data(opts)
    generator = torch.Generator().manual_seed(args.seed)
    index = torch.randperm(len(bundle.train.y), generator=generator)[: args.batch_size]
    standardize = Standardizer.fit(bundle.train.x)
    loss_weights, _ = balance_weights(opts, bundle.train.y, bundle.num_classes)
    return standardize(bundle.train.x[index]), bundle.train.y[index], loss_weights, bundle.classes


def run(args: argparse.Namespace) -> int:
    from ..compare import compare_gradients, format_report
    from ..errors import UsageError
    from ..models import build_model
    from ..utils import select_device, set_seed

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.fd_samples < 0:
        raise UsageError(f"--fd-samples must be 0 or more, got {args.fd_samples}")
    device, dtype = select_device(args.device), DTYPES[args.dtype]
    set_seed(args.seed)
    x, y, class_weight, classes = load_batch(args)
    model = build_model(
        in_features=x.shape[1], num_classes=len(classes), seed=args.seed, **model_kwargs_from_args(args)
    )
    if args.model == "perceptron":
        with torch.no_grad():
            generator = torch.Generator().manual_seed(args.seed)
            for p in model.parameters():
                p.copy_(0.01 * torch.randn(p.shape, generator=generator))
    model.to(device=device, dtype=dtype)
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    if class_weight is not None:
        class_weight = class_weight.to(device=device, dtype=dtype)

    report = compare_gradients(
        model,
        x,
        y,
        class_weight=class_weight,
        fd_samples=args.fd_samples,
        finite_differences=dtype == torch.float64 and args.fd_samples > 0,
        seed=args.seed,
    )
    out = report_stream(args.json)
    print(f"{model.config()} on {x.shape[0]} samples of {len(classes)} classes, {args.dtype}, {device}", file=out)
    print(format_report(report), file=out)
    write_json(args.json, report.to_dict())
    return 0 if report.ok else 1
