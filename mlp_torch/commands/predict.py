"""``mlp-torch predict CHECKPOINT IMAGE…``: the most likely classes of each image, with probabilities."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import HelpFormatter
from .json_output import add_json_argument, report_stream, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image files with a trained model",
        description="Print the top classes of each image with their softmax probabilities. The checkpoint\n"
        "carries the class names, image size and normalisation; images of any size and mode\n"
        "are converted to RGB and resized as in training.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, metavar="RUN_DIR|CHECKPOINT", help="a run directory or a .pt file")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files (jpg, png, ...)")
    parser.add_argument("--top", type=int, default=3, help="classes to show per image")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_json_argument(parser, "the predictions")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..training.inference import load_model, predict_images
    from ..utils import select_device

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    loaded = load_model(args.checkpoint, select_device(args.device))
    predictions = predict_images(loaded, args.images, args.top)
    out = report_stream(args.json)
    for path, top in zip(args.images, predictions):
        print(f"{path}", file=out)
        for name, p in top:
            print(f"  {name:<16} {100 * p:6.2f} %", file=out)
    if loaded.model.kind == "perceptron":
        print("(a perceptron is not a probabilistic model: these are softmax-normalised scores)", file=out)
    write_json(
        args.json,
        [
            {"image": str(path), "top": [{"class": n, "probability": p} for n, p in top]}
            for path, top in zip(args.images, predictions)
        ],
    )
    return 0
