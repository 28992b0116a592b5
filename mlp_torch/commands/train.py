"""``mlp-torch train``: train a model, log to TensorBoard, save checkpoints and metrics in a run directory."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from ..data.saved import LOCATION_KEYS, data_options_from_saved, location_overrides
from ..training.config import DEFAULT_LR, OPTIMIZERS, SCHEDULES, TrainConfig
from ._common import INTERRUPTED_EXIT, HelpFormatter
from ._flags import add_data_arguments, add_model_arguments, data_options_from_args

# Only these may change when a run is resumed; everything else comes from its config.json.
RESUMABLE = ("epochs", "device", "progress")
# Where the data are and come from: never taken from config.json on --resume (a resume never downloads).
DATA_LOCATIONS = ("data_root", "cache_dir", "cache", *LOCATION_KEYS)


def register(subparsers: Any) -> None:
    d = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train a classifier; runs go to runs/<date-time>_<name>/",
        description=(
            "Train the lecture's classifiers. With no flags: the two-layer sigmoid MLP (3072-512-C)\n"
            "on CIFAR cat/dog/bear with our hand-written autograd Functions (--backend custom), on the\n"
            "best device available. Each run writes config.json, metrics.json, TensorBoard event files\n"
            "and checkpoints/{best,last}.pt into a new run directory.\n\n"
            "--resume RUN_DIR --epochs N continues a run (interrupted or completed) to N epochs in all.\n"
            "The learning-rate curve is rebuilt for the new total: the cosine is re-stretched to end at\n"
            "epoch N, and the run continues from its current step on that curve (warm-up is not repeated),\n"
            "so a completed run's learning rate, which had decayed to 0, rises again to the curve's value\n"
            "there. config.json records the new total."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    parser.set_defaults(model=d.model, hidden=d.hidden, activation=d.activation, backend=d.backend)
    add_data_arguments(parser)
    parser.set_defaults(augment_flip=d.data.augment_flip, augment_crop=d.data.augment_crop)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="passes over the training split; with --resume the new total, the schedule re-stretched to it",
    )
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="images per SGD step")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="sgd (the lecture's) or adam")
    opt.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate η; linear models (softmax, perceptron, an mlp without hidden "
        f"layers) need a smaller one (default: mlp {DEFAULT_LR['mlp']}, linear models "
        f"{DEFAULT_LR['linear']})",
    )
    opt.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (0 = plain SGD)")
    opt.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov, help="Nesterov momentum")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 penalty λ (adds λw to ∂ℓ/∂w)")
    opt.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule after warm-up")
    opt.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.warmup_epochs,
        help="linear warm-up from 0 to --lr over this many epochs",
    )
    opt.add_argument("--step-size", type=int, default=d.step_size, help="schedule step: epochs between decays")
    opt.add_argument("--gamma", type=float, default=d.gamma, help="schedule step: decay factor")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=d.seed, help="seeds initialisation, split, shuffling, augmentation")
    run.add_argument("--device", default=d.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    run.add_argument("--runs-dir", type=Path, default=d.runs_dir, help="where run directories are created")
    run.add_argument("--name", default=d.name, help="run name (default: from the model, e.g. mlp512-sigmoid-custom)")
    run.add_argument(
        "--check-grads-every",
        type=int,
        default=d.check_grads_every,
        metavar="N",
        help="every N steps compare the custom/manual gradients with builtin and log the error (0 = off)",
    )
    run.add_argument(
        "--histogram-every",
        type=int,
        default=d.histogram_every,
        metavar="N",
        help="every N epochs log histograms, weight templates and the confusion matrix (0 = off)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=d.progress,
        help="a progress bar per epoch on stderr, beside the one line per epoch on stdout "
        "(default: only when stderr is a terminal)",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from checkpoints/last.pt with its own config.json "
        f"(only {', '.join('--' + k for k in RESUMABLE)} may change; --data-root and --cache-dir say where "
        "the data are now; nothing is downloaded)",
    )
    parser.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the parsed flags describe."""
    return TrainConfig(
        model=args.model,
        hidden=list(args.hidden),
        activation=args.activation,
        backend=args.backend,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        step_size=args.step_size,
        gamma=args.gamma,
        seed=args.seed,
        device=args.device,
        runs_dir=args.runs_dir,
        name=args.name,
        check_grads_every=args.check_grads_every,
        histogram_every=args.histogram_every,
        progress=args.progress,
        data=data_options_from_args(args),
    )


def run_train(args: argparse.Namespace) -> int:
    from ..training import load_run_config, train
    from ..utils import print_line

    if args.resume is None:
        config = config_from_args(args)
        metrics = train(config)
    else:
        config = load_run_config(args.resume)
        explicit = args.typed
        ignored = sorted(explicit - set(RESUMABLE) - set(DATA_LOCATIONS) - {"resume"})
        if ignored:
            print(
                "mlp-torch train: note: with --resume the run's config.json decides; ignoring "
                + ", ".join("--" + k.replace("_", "-") for k in ignored),
                file=sys.stderr,
            )
        for key in set(RESUMABLE) & explicit:
            setattr(config, key, getattr(args, key))
        # which data from config.json; where they are and any URL, md5 or cache folder from the command line
        overrides = location_overrides(args, data_root_given="data_root" in explicit)
        config.data = data_options_from_saved(config.to_dict()["data"], str(args.resume / "config.json"), overrides)
        config.validate()
        metrics = train(config, resume=args.resume)
    if metrics["status"] == "interrupted":
        run_dir = Path(metrics["run_dir"])
        print_line(
            f"\nstopped after {metrics['epochs']} complete epoch(s); the exact position is saved in "
            f"{run_dir / 'checkpoints' / 'last.pt'}. Continue with:\n  mlp-torch train --resume {run_dir}"
        )
        # 128 + the signal's number, as a shell reports a program the signal stopped (SIGTERM: 143)
        return 128 + signal.Signals[metrics["signal"]].value if metrics.get("signal") else INTERRUPTED_EXIT
    return 0
