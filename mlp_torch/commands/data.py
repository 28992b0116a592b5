"""``mlp-torch data``: show what a run would train on, loading (and caching) it once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.options import add_data_arguments, data_options_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import HelpFormatter

    parser = subparsers.add_parser(
        "data",
        help="show the dataset a run would use: classes, per-split counts, cache",
        description="Load the dataset the data flags describe (downloading, decoding and caching it if needed) "
        "and print its source, classes, per-split per-class counts, image size and cache file.",
        formatter_class=HelpFormatter,
    )
    add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (and synthetic data)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help='also write {"classes": [...], "splits": {"train": {class: n}, "val": ..., "test": ...}, '
        '"skipped": {"not_images": n, "unreadable": n, "dangling_links": n}} (skipped: image folders only)',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_data

    bundle = load_data(data_options_from_args(args))
    counts = bundle.counts()
    width = max(len(c) for c in bundle.classes)
    print(f"source:     {bundle.source}")
    print(f"classes:    {', '.join(bundle.classes)} (labels 0..{bundle.num_classes - 1})")
    print(f"image size: {bundle.image_size}x{bundle.image_size} RGB ({bundle.in_features} features)")
    if bundle.cache_path is None:
        print("cache:      none")
    else:
        print(f"cache:      {bundle.cache_path} ({'reused' if bundle.cache_hit else 'written'})")
    print(f"loaded in:  {bundle.load_seconds:.2f} s")
    if bundle.skipped:
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in bundle.skipped.items() if n)
        skipped = skipped or "nothing"
        print(f"skipped:    {skipped}")
    print(f"{'class':<{width}}  {'train':>7} {'val':>7} {'test':>7}")
    for name in bundle.classes:
        print(f"{name:<{width}}  " + " ".join(f"{counts[s][name]:>7}" for s in ("train", "val", "test")))
    print(f"{'total':<{width}}  " + " ".join(f"{sum(counts[s].values()):>7}" for s in ("train", "val", "test")))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "classes": bundle.classes,
            "splits": counts,
            **({"skipped": bundle.skipped} if bundle.skipped else {}),
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0
