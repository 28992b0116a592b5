"""``mlp-torch sweep``: a hyperparameter search on Optuna; every trial is an ordinary run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..data import DataOptions
from ..sweep.plan import PRUNERS, SAMPLERS
from ..sweep.space import NOT_SWEEP_FLAGS, Choices, Range, field_kinds
from ..training.config import TrainConfig
from ._common import HelpFormatter, signal_exit
from ._flags import DATA_FIELDS, MODEL_FIELDS, add_space_fields
from .train import OPTIMISATION_FIELDS, RUN_FIELDS, train_command

SWEEP_RUN_FIELDS = tuple(name for name in RUN_FIELDS if name not in NOT_SWEEP_FLAGS)

DESCRIPTION = """\
Search hyperparameters with Optuna. Every flag of mlp-torch train works here (but --runs-dir,
--name, --progress and --resume); a numeric, true/false or choice flag, and --hidden, may hold a
search space instead of a value:

  LOW..HIGH        uniform in [LOW, HIGH] (integers for an integer flag)  --momentum 0.8..0.99
  LOW..HIGH:log    log-uniform, LOW > 0                                   --lr 1e-3..1e-1:log
  A,B,C            one of these values                                    --activation sigmoid,relu
                                                                          --weight-decay 0,1e-4,5e-4
                                                                          --nesterov true,false
  "A|B|C"          --hidden: one of these layer lists                     --hidden "512|1024|1024 1024"

Each trial trains its configuration with --seeds seeds and is scored by the mean of their best
validation balanced accuracies; the test split is never used to choose. Each run is an ordinary
run directory in SWEEP_DIR/trials (eval, predict, train --resume and TensorBoard's HPARAMS tab
work on it). After each trial a line; at the end SWEEP_DIR/sweep.json, the 10 best trials with
their test scores, and the mlp-torch train command of the best.

--trials N is the study's total: rerunning the same command continues the study up to N, and
first runs again the trials that were interrupted or killed. Trials that diverge are FAIL and
count. The study lives in SWEEP_DIR/study.journal (Optuna's journal file; several processes and
machines may share it), or in --storage URL: postgresql://USER:PASSWORD@HOST/DB (pip install
psycopg2-binary), mysql+pymysql://…, sqlite:///FILE, redis://…, or a journal file's path. Run
the same command with the same --storage and --study on several machines to add their trials
to one study.

Ctrl-C: no new trial starts, running trials stop after their step and save last.pt; a second
Ctrl-C aborts them at once."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="search hyperparameters (Optuna): every train flag may hold a range or choices",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    searchable = set(field_kinds())
    add_space_fields(parser.add_argument_group("model"), TrainConfig, MODEL_FIELDS, searchable)
    add_space_fields(parser.add_argument_group("data"), DataOptions, DATA_FIELDS, searchable)
    add_space_fields(parser.add_argument_group("optimisation"), TrainConfig, OPTIMISATION_FIELDS, searchable)
    add_space_fields(parser.add_argument_group("run"), TrainConfig, SWEEP_RUN_FIELDS, searchable)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--trials", type=int, default=20, metavar="N", help="trials in the study, in all")
    sweep.add_argument(
        "--workers", type=int, default=1, metavar="K", help="trials at once, each in a process of its own"
    )
    sweep.add_argument(
        "--sampler", choices=SAMPLERS, default="tpe", help="tpe (Bayesian), random, or grid (choices only)"
    )
    sweep.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="median: stop a trial whose validation balanced accuracy after an epoch (from the second) is "
        "below the median of earlier trials' at that epoch, once 5 have finished; none: never",
    )
    sweep.add_argument(
        "--seeds", type=int, default=1, metavar="S", help="seeds per configuration (--seed … --seed + S − 1)"
    )
    sweep.add_argument("--sweep-dir", type=Path, default=Path("sweep"), help="where trial runs and sweep.json go")
    sweep.add_argument("--study", metavar="NAME", help="the study's name (default: the sweep directory's name)")
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna storage: postgresql://…, mysql://…, sqlite:///…, redis://…, or a journal file "
        "(default: SWEEP_DIR/study.journal)",
    )
    parser.set_defaults(func=run_sweep)


def plan_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~mlp_torch.sweep.SweepPlan` the flags describe; bad spaces raise :class:`UsageError`."""
    from ..sweep import SweepPlan, parse_flag
    from ..sweep.space import check_space

    kinds = field_kinds()
    fixed: dict[str, Any] = {}
    spaces: dict[str, Any] = {}
    for name in (*MODEL_FIELDS, *DATA_FIELDS, *OPTIMISATION_FIELDS, *SWEEP_RUN_FIELDS):
        value = getattr(args, name)
        if name in kinds and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = " ".join(value)  # --hidden as typed: "1024 1024" or "512|1024 1024"
        if name in kinds and isinstance(value, str):
            value = parse_flag(kinds[name], value)
        if isinstance(value, (Range, Choices)):
            spaces[name] = value
        else:
            fixed[name] = value
    check_space(fixed, spaces)
    return SweepPlan(fixed, spaces, args.trials, args.seeds, args.sampler, args.pruner)


def run_sweep(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..sweep import StorageSpec, Sweep
    from ..sweep.report import percent, table
    from ..sweep.runner import SUMMARY_FILE, TRIALS_DIR
    from ..utils import print_line

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    plan = plan_from_args(args)
    sweep_dir: Path = args.sweep_dir
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UsageError(f"--sweep-dir {sweep_dir} is a file; pass a folder for the sweep")
    study = args.study or sweep_dir.absolute().name or "sweep"
    outcome = Sweep(plan, StorageSpec(args.storage, sweep_dir), study, sweep_dir, args.workers, train_command).run()
    print_line("\n" + table(outcome.trials, plan))
    best = outcome.summary["best"]
    if best is not None:
        print_line(
            f"\nbest: trial {best['number']}, validation balanced accuracy {percent(best['value'])} "
            f"(test accuracy {percent(best['test_accuracy'])}); train it again with:\n  {best['command']}"
        )
    print_line(f"\n{sweep_dir / SUMMARY_FILE}; watch the runs with: tensorboard --logdir {sweep_dir / TRIALS_DIR}")
    if outcome.signal:
        return signal_exit(outcome.signal)
    if best is None:
        print_line("no trial has completed (see the lines above for why)")
        return 1
    return 0
