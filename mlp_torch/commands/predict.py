"""``mlp-torch predict CHECKPOINT INPUT…``: the most likely classes of each image (or 2-D point), with probabilities."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import HelpFormatter
from .json_output import add_json_argument, report_stream, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image files (or 2-D points) with a trained model",
        description="Print the top classes of each input with their softmax probabilities. The checkpoint\n"
        "carries the class names, image size and normalisation; images of any size and mode\n"
        "are converted to RGB and resized as in training. A model of a 2-D dataset (linear, xor,\n"
        "circles, spiral) takes points x,y in the data's own units instead, e.g.\n"
        "  mlp-torch predict RUN 0.5,-1.2 0,0\n"
        "(a point whose x is negative goes after --: mlp-torch predict RUN -- -0.5,1.2).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, metavar="RUN_DIR|CHECKPOINT", help="a run directory or a .pt file")
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE|X,Y", help="image files (jpg, png, ...), or points x,y for a 2-D model"
    )
    parser.add_argument("--top", type=int, default=3, help="classes to show per input")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_json_argument(parser, "the predictions")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..training.inference import load_model, parse_point, predict_images, predict_points
    from ..utils import select_device

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    loaded = load_model(args.checkpoint, select_device(args.device))
    if loaded.takes_points:
        points = [parse_point(text) for text in args.inputs]
        predictions = predict_points(loaded, points, args.top)
        names = [f"({x1:g}, {x2:g})" for x1, x2 in points]
        records: list[dict[str, Any]] = [{"point": list(point)} for point in points]
    else:
        images = [Path(text) for text in args.inputs]
        predictions = predict_images(loaded, images, args.top)
        names = [str(path) for path in images]
        records = [{"image": str(path)} for path in images]
    out = report_stream(args.json)
    for name, top in zip(names, predictions):
        print(name, file=out)
        for label, p in top:
            print(f"  {label:<16} {100 * p:6.2f} %", file=out)
    if loaded.model.kind == "perceptron":
        print("(a perceptron is not a probabilistic model: these are softmax-normalised scores)", file=out)
    write_json(
        args.json,
        [
            {**record, "top": [{"class": n, "probability": p} for n, p in top]}
            for record, top in zip(records, predictions)
        ],
    )
    return 0
