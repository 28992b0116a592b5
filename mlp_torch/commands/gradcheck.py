"""``mlp-torch gradcheck``: are the hand-written gradients right? One table, exit 1 on any failure."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import HelpFormatter


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gradcheck",
        help="check every hand-written backward against finite differences and PyTorch",
        description=(
            "Run torch.autograd.gradcheck and gradgradcheck (float64) on every Function in\n"
            "mlp_torch.functional, and compare forward and backward with PyTorch's own op in float32.\n"
            "Exits 1 if any check fails."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="where to run the checks: cpu, cuda, mps or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..gradcheck import format_table, run_checks
    from ..utils import check_seed, select_device

    check_seed(args.seed)
    device = select_device(args.device)
    rows = run_checks(device, seed=args.seed)
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed on {device}")
    return 1 if failed else 0
