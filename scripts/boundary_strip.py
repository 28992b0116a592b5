"""One run's decision boundary at a few epochs, side by side: how training bends it.

    python scripts/boundary_strip.py --at 1,3,10,100 --out docs/circles-evolution.png -- \
        --dataset circles --hidden 8 --activation tanh --epochs 100

The flags after ``--`` are ``mlp-torch train``'s (a 2-D dataset); the run is trained as that command
trains it, and a callback keeps a copy of the model after each epoch named by ``--at``, drawn at
the end with :func:`mlp_torch.training.figures.decision_boundary_strip` (the same drawing as the
run's TensorBoard frames and decision_boundary.png).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from mlp_torch.cli import build_parser
from mlp_torch.commands.train import config_from_args
from mlp_torch.models import Classifier
from mlp_torch.training import Callback, TrainState, train
from mlp_torch.training.figures import decision_boundary_strip


class Snapshots(Callback):
    """A copy of the model after each of the given epochs, and what the picture needs of the run."""

    def __init__(self, epochs: list[int]) -> None:
        self.epochs = epochs
        self.models: list[Classifier] = []
        self.state: TrainState | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.state = state

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch in self.epochs:
            self.models.append(copy.deepcopy(state.model))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at", required=True, help="comma-separated epochs to draw, e.g. 1,3,10,100")
    parser.add_argument("--out", type=Path, required=True, help="the PNG (or .pdf, .svg) to write")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then mlp-torch train's flags")
    args = parser.parse_args(argv)
    epochs = sorted({int(e) for e in args.at.split(",")})
    config = config_from_args(build_parser().parse_args(["train", *args.train_flags[args.train_flags[:1] == ["--"] :]]))
    if not config.data.is_planar or epochs[0] < 1 or epochs[-1] > config.epochs:
        parser.error(f"--at needs epochs within 1..{config.epochs} of a 2-D dataset's run")
    snapshots = Snapshots(epochs)
    train(config, callbacks=[snapshots])
    state = snapshots.state
    assert state is not None
    figure = decision_boundary_strip(
        snapshots.models,
        [f"epoch {e}" for e in epochs],
        state.data.train.x,
        state.data.train.y,
        state.data.classes,
        state.standardizer,
    )
    figure.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
