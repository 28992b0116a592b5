"""``mlp-torch data``: show what a run would train on, loading (and caching) it once."""

from __future__ import annotations

import argparse

from ._common import HelpFormatter
from ._flags import add_data_arguments, data_options_from_args
from .json_output import add_json_argument, report_stream, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="show the dataset a run would use: classes, per-split counts, cache",
        description="Load the dataset the data flags describe (downloading, decoding and caching it if needed) "
        "and print its source, classes, per-split per-class counts, image size (or, for the 2-D datasets, "
        "that its samples are points) and cache file.",
        formatter_class=HelpFormatter,
    )
    add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (and synthetic data)")
    add_json_argument(
        parser,
        '{"classes": [...], "splits": {"train": {class: n}, "val": ..., "test": ...}, '
        '"skipped": {"not_images": n, "unreadable": n, "dangling_links": n}} (skipped: image folders only)',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_data

    bundle = load_data(data_options_from_args(args, seed=args.seed))
    counts = bundle.counts()
    width = max(len(c) for c in bundle.classes)
    lines = [
        f"source:     {bundle.source}",
        f"classes:    {', '.join(bundle.classes)} (labels 0..{bundle.num_classes - 1})",
        f"image size: {bundle.image_size}x{bundle.image_size} RGB ({bundle.in_features} features)"
        if bundle.has_images
        else f"inputs:     2-D points (x₁, x₂), {bundle.in_features} features",
        "cache:      none"
        if bundle.cache_path is None
        else f"cache:      {bundle.cache_path} ({'reused' if bundle.cache_hit else 'written'})",
        f"loaded in:  {bundle.load_seconds:.2f} s",
    ]
    if bundle.skipped:
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in bundle.skipped.items() if n)
        lines.append(f"skipped:    {skipped or 'nothing'}")
    lines.append(f"{'class':<{width}}  {'train':>7} {'val':>7} {'test':>7}")
    for name in bundle.classes:
        lines.append(f"{name:<{width}}  " + " ".join(f"{counts[s][name]:>7}" for s in ("train", "val", "test")))
    lines.append(f"{'total':<{width}}  " + " ".join(f"{sum(counts[s].values()):>7}" for s in ("train", "val", "test")))
    print("\n".join(lines), file=report_stream(args.json))
    summary = {"classes": bundle.classes, "splits": counts, **({"skipped": bundle.skipped} if bundle.skipped else {})}
    write_json(args.json, summary)
    return 0
