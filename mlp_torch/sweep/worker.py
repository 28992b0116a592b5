"""A sweep's worker: a process of its own that trains the trials the scheduler hands it, one at a time.

The scheduler (:mod:`mlp_torch.sweep.runner`) starts it with :func:`main` (forked from
multiprocessing's fork server, which has imported this module and torch and run nothing else),
tells it its share of the cores, and talks to it over a pipe:

    worker -> scheduler   ("ready", pid)            set up: storage open, lock held
    scheduler -> worker   trial_id                  train this trial (the scheduler asked for it)
    worker -> scheduler   ("done", TrialResult)     the study has been told how it ended
    scheduler -> worker   None                      no more trials: exit

The worker runs in a process group of its own, so a terminal's Ctrl-C reaches only the
scheduler, which passes each signal on once. In a trial, the first signal stops the run after
its step (``last.pt`` saved) and the second aborts at once; between trials a signal ends the
worker. While it lives the worker holds an exclusive ``flock`` on its lock file, which the kernel
drops however the process ends: a trial whose worker's lock is free is a trial nobody trains.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import IO, Any

from ..errors import MlpTorchError
from ..training import Callback, TrainState
from .plan import SweepPlan
from .storage import StorageSpec, heartbeat, open_study
from .trial import run_trial

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs, sent once when it starts (picklable)."""

    storage: StorageSpec
    study: str
    plan: SweepPlan
    runs_dir: Path
    threads: int
    lock_path: Path


class WorkerSignals(Callback):
    """SIGINT/SIGTERM/SIGHUP in a worker: between trials, exit; in a trial, the first is noted, the second aborts.

    A trial's run installs its own handlers once training starts (``GracefulStop``); as a callback
    this stops a run whose signal came while it was still loading its data.
    """

    def __init__(self) -> None:
        self.in_trial = False
        self.received: str | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.in_trial or self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_train_start(self, state: TrainState) -> None:
        if self.received is not None:
            state.should_stop, state.signal = True, self.received


def main(conn: Connection, setup: WorkerSetup) -> None:
    """The worker process: set up, say ready, then train each trial it is given until told to stop."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    signals = WorkerSignals()
    for sig in SIGNALS:
        signal.signal(sig, signals.handle)
    try:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(setup.threads)  # for its children
        torch.set_num_threads(setup.threads)
        lock = hold_lock(setup.lock_path)
        storage = setup.storage.open()
        study = open_study(storage, setup.storage, setup.study, setup.plan, for_sampling=False)
        conn.send(("ready", os.getpid()))
    except KeyboardInterrupt:
        return
    except MlpTorchError as err:
        conn.send(("error", str(err)))
        return
    try:
        serve(conn, setup, storage, study, signals)
    finally:
        if lock is not None:
            lock.close()


def serve(conn: Connection, setup: WorkerSetup, storage: Any, study: Any, signals: WorkerSignals) -> None:
    while True:
        try:
            trial_id = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # the scheduler is gone, or a signal between trials
            return
        if trial_id is None:
            return
        signals.in_trial, signals.received = True, None
        with heartbeat(storage, trial_id):
            result = run_trial(study, trial_id, setup.plan, setup.runs_dir, [signals])
        signals.in_trial = False
        try:
            conn.send(("done", result))
        except OSError:  # the scheduler is gone; the study knows the outcome already
            return
        if signals.received is not None or result.outcome == "interrupted":
            return


def hold_lock(path: Path) -> IO[bytes] | None:
    """Create ``path`` and hold an exclusive ``flock`` on it for the process's lifetime (``None`` without fcntl)."""
    try:
        import fcntl
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "ab")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def lock_is_free(path: Path) -> bool:
    """Whether no process holds ``path``'s lock (its worker has ended); ``False`` if unknown (no file, no fcntl)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        f = open(path, "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True
