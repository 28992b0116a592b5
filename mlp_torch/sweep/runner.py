"""The scheduler of ``mlp-torch sweep``: ask the study for trials, hand them to worker processes, report.

    Sweep(plan, storage, study, sweep_dir, workers, command_for).run() -> SweepOutcome

One scheduler per machine; any number of them may share a study through its storage. Each asks
the study for a trial (Optuna's sampler picks the parameters), labels it with the lock file of
the worker it hands it to, and waits for the worker to report. ``--trials N`` is the study's total:
a trial counts once it runs, unless it ends interrupted or killed (that says nothing about its
parameters). So rerunning the same command continues the study up to N, and first runs again,
with the same parameters and a new run directory, every trial that was interrupted or killed.

What can go wrong, and what happens:

* a worker dies (SIGKILL, out of memory): its trial is marked ``FAIL`` (``killed``) at once, a new
  worker takes its place, the sweep goes on;
* the whole sweep is killed: its trials stay ``RUNNING`` in the storage until the next sweep of
  the study on this machine finds their workers' locks free and marks them ``FAIL`` (``lost``);
  with an RDB storage, any machine's sweep does so once their heartbeat is stale;
* Ctrl-C (SIGTERM, SIGHUP): no new trial starts, running trials stop after their step and save
  ``last.pt`` (``FAIL``, ``interrupted``), then ``sweep.json`` and the table are written as usual;
  a second Ctrl-C aborts the running trials at once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

from ..data import DataOptions, load_data
from ..errors import MlpTorchError
from ..training.config import TrainConfig
from ..training.rundir import write_json
from ..utils import print_line
from .plan import SweepPlan
from .report import best_trial, counts_toward_total, outcome, progress_line, summary
from .storage import StorageSpec, fail_stale_trials, open_study
from .worker import SIGNALS, WorkerSetup, lock_is_free

TRIALS_DIR = "trials"  # SWEEP_DIR/trials/<date-time>_<study>-trial0007: the runs
WORKERS_DIR = ".workers"  # SWEEP_DIR/.workers/<host>-<pid>-<n>.lock: one per live worker
SUMMARY_FILE = "sweep.json"
MAX_START_FAILURES = 3  # workers that die before they are ready, in a row: stop, something is wrong
VOID = ("interrupted", "killed", "lost")  # trial outcomes that do not count, and are run again


@dataclass
class SweepOutcome:
    """What a sweep ended with: ``sweep.json``'s contents, the trials, and the signal that stopped it, if one did."""

    summary: dict[str, Any]
    trials: list[Any]
    signal: str | None


@dataclass(eq=False)
class Worker:
    """The scheduler's handle on one worker process."""

    process: Any
    conn: Connection
    lock_path: Path
    ready: bool = False  # it has said so: set up, lock held
    leaving: bool = False  # told that there are no more trials
    trial: tuple[int, int] | None = None  # (number, trial_id) of the trial it trains


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores (``OMP_NUM_THREADS``, when set, is taken as that share)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else max(1, cores() // workers)


class Sweep:
    """One machine's part of a sweep.

    Args:
        plan: what to train, how many trials in all.
        storage: where the study lives.
        study_name: the study.
        sweep_dir: where trial runs, worker locks and ``sweep.json`` go.
        workers: worker processes at once.
        command_for: the ``mlp-torch train`` command that trains a config (for ``sweep.json``'s best).
    """

    def __init__(
        self,
        plan: SweepPlan,
        storage: StorageSpec,
        study_name: str,
        sweep_dir: Path,
        workers: int,
        command_for: Callable[[TrainConfig], str],
    ) -> None:
        self.plan, self.spec, self.study_name = plan, storage, study_name
        self.sweep_dir, self.max_workers, self.command_for = Path(sweep_dir), workers, command_for
        self.threads = threads_per_worker(workers)
        self.workers: list[Worker] = []
        self.stopping: str | None = None  # the name of the signal that asked to stop
        self.fatal: str | None = None
        self.start_failures = 0
        self.started = time.monotonic()
        self.host = socket.gethostname()
        self.storage: Any = None
        self.study: Any = None

    # ---------------------------------------------------------------------------------- the whole sweep

    def run(self) -> SweepOutcome:
        """Run trials until the study has ``plan.trials``, or a signal stops it; write ``sweep.json``."""
        self.storage = self.spec.open()
        self.study = open_study(self.storage, self.spec, self.study_name, self.plan)
        self.fail_orphans()
        self.retry_void_trials()
        self.preload_data()
        left = self.budget_left()
        self.say_start(left)
        try:
            if left > 0:
                with self.forwarding_signals():
                    self.loop()
        except BaseException:
            self.stop_workers(urgently=True)
            raise
        self.stop_workers()
        trials = self.study.get_trials(deepcopy=False)
        if self.fatal:
            raise MlpTorchError(self.fatal)
        return SweepOutcome(self.write_summary(trials), trials, self.stopping)

    def loop(self) -> None:
        while True:
            self.fill()
            if not self.workers:
                return
            self.wait_for_workers(timeout=1.0)

    def budget_left(self) -> int:
        """Trials still to start: ``--trials`` (or the grid's size) minus those that count (running ones too).

        Queued trials (``WAITING``: retries) are among those to start; the next ``ask`` takes them first.
        """
        fail_stale_trials(self.study)  # RDB storages: trials of processes whose heartbeat stopped
        trials = self.study.get_trials(deepcopy=False)
        total = min(self.plan.trials, self.plan.grid_size or self.plan.trials)
        return max(0, total - sum(counts_toward_total(t) for t in trials))

    def fill(self) -> None:
        """Hand a trial to each idle worker while the budget lasts; start workers, or let idle ones go."""
        left = 0 if self.stopping or self.fatal else self.budget_left()
        for worker in [w for w in self.workers if w.ready and not w.leaving and w.trial is None]:
            if left > 0:
                self.assign(worker)
                left -= 1
            else:
                self.retire(worker)
        starting = sum(not w.ready and not w.leaving for w in self.workers)
        for _ in range(min(self.max_workers - len(self.workers), left - starting)):
            self.start_worker()

    # ---------------------------------------------------------------------------------- workers

    def start_worker(self) -> None:
        context = worker_context()
        lock_path = self.sweep_dir / WORKERS_DIR / f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        setup = WorkerSetup(
            self.spec, self.study_name, self.plan, self.sweep_dir / TRIALS_DIR, self.threads, lock_path.absolute()
        )
        ours, theirs = context.Pipe()
        from .worker import main

        process = context.Process(target=main, args=(theirs, setup), name="mlp-torch-sweep-worker", daemon=False)
        with thread_environment(self.threads):
            process.start()
        theirs.close()
        self.workers.append(Worker(process, ours, lock_path))

    def assign(self, worker: Worker) -> None:
        trial = self.study.ask(self.plan.distributions())
        # the storage's id, which a worker needs to report to this trial (Optuna's Trial(study, trial_id))
        trial_id = trial._trial_id
        self.storage.set_trial_user_attr(trial_id, "worker_lock", str(worker.lock_path.absolute()))
        self.storage.set_trial_user_attr(trial_id, "host", self.host)
        worker.trial = (trial.number, trial_id)
        with suppress(OSError):  # a worker that died just now: its death is handled with the others
            worker.conn.send(trial_id)

    def retire(self, worker: Worker) -> None:
        with suppress(OSError):
            worker.conn.send(None)
        worker.leaving = True  # no more trials for it: it exits

    def wait_for_workers(self, timeout: float) -> None:
        """Handle what the workers said and which of them ended, within ``timeout`` seconds."""
        by_conn = {w.conn: w for w in self.workers}
        by_sentinel = {w.process.sentinel: w for w in self.workers}
        ready = wait([*by_conn, *by_sentinel], timeout=timeout)
        for obj in ready:
            if obj in by_conn:
                self.receive(by_conn[obj])
        for obj in ready:
            if obj in by_sentinel:
                worker = by_sentinel[obj]
                while worker.conn.poll():  # what it said before it ended
                    if not self.receive(worker):
                        break
                self.ended(worker)

    def receive(self, worker: Worker) -> bool:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return False
        kind = message[0]
        if kind == "ready":
            worker.ready, self.start_failures = True, 0
        elif kind == "error":
            self.fatal = message[1]
        elif kind == "done":
            number = message[1].number
            worker.trial = None
            self.report(number)
        return True

    def ended(self, worker: Worker) -> None:
        """A worker's process has ended: fail the trial it was training, if any, and forget it."""
        worker.process.join()
        code = worker.process.exitcode
        self.workers.remove(worker)
        worker.conn.close()
        with suppress(OSError):
            worker.lock_path.unlink()
        if worker.trial is not None:
            how = "interrupted" if self.stopping else "killed"
            self.fail_trial(worker.trial, how, f"its worker process (pid {worker.process.pid}) {exit_reason(code)}")
        elif not worker.ready and code != 0 and not self.stopping:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES and not self.fatal:
                self.fatal = f"sweep workers end before they start ({exit_reason(code)}); see the messages above"

    def fail_trial(self, trial: tuple[int, int], how: str, message: str) -> None:
        number, trial_id = trial
        if self.mark_failed(trial_id, how, message):
            self.report(number)

    def mark_failed(self, trial_id: int, how: str, message: str) -> bool:
        """Mark a running trial ``FAIL``, saying why; ``False`` if it has ended already (its worker told the study).

        Through the storage, as Optuna's own ``fail_stale_trials`` does: ``study.tell`` would run the
        sampler's end-of-trial hook, which the grid sampler uses to stop ``study.optimize``.
        """
        from optuna.trial import TrialState

        if self.storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        try:
            self.storage.set_trial_user_attr(trial_id, "outcome", how)
            self.storage.set_trial_user_attr(trial_id, "message", message)
            return bool(self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
        except RuntimeError:  # UpdateFinishedTrialError: its worker told the study just now
            return False

    def stop_workers(self, urgently: bool = False) -> None:
        """Let every worker go and wait for it; ``urgently`` (after an error), stop their runs first (SIGTERM)."""
        for worker in self.workers:
            if urgently:
                with suppress(OSError):
                    os.kill(worker.process.pid, signal.SIGTERM)
            self.retire(worker)
        while self.workers:
            self.wait_for_workers(timeout=1.0)

    # ---------------------------------------------------------------------------------- the study

    def fail_orphans(self) -> None:
        """Mark ``FAIL`` (``lost``) the running trials of this machine whose worker has ended without a word."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            lock = trial.user_attrs.get("worker_lock")
            if lock is None or trial.user_attrs.get("host") != self.host:
                continue
            if lock_is_free(Path(lock)) or not Path(lock).exists():
                self.mark_failed(trial._trial_id, "lost", "its sweep was killed while it ran")
                with suppress(OSError):
                    Path(lock).unlink()

    def retry_void_trials(self) -> None:
        """Queue again, once, the parameters of every trial that was interrupted or killed (while the budget lasts)."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        left = self.budget_left() - sum(t.state.name == "WAITING" for t in trials)
        for trial in trials:
            if left <= 0:
                return
            if outcome(trial) in VOID and trial.number not in retried and trial.params:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                retried.add(trial.number)
                left -= 1

    def preload_data(self) -> None:
        """Load (download, decode, cache) the data once here, before the workers all load them at once.

        Skipped when a data option is searched: then the trials do not all train on the same data.
        A missing data folder stops the sweep here, with one line, before any trial runs.
        """
        data_fields = {f.name for f in dataclasses.fields(DataOptions)}
        if not set(self.plan.spaces) & data_fields:
            load_data(self.plan.base.data)

    # ---------------------------------------------------------------------------------- what it says

    def say_start(self, left: int) -> None:
        trials = self.study.get_trials(deepcopy=False)
        done = sum(counts_toward_total(t) for t in trials)
        grid = f" (a grid of {self.plan.grid_size})" if self.plan.grid_size else ""
        print_line(
            f"sweep: study {self.study_name!r} in {self.spec.display}: {self.plan.trials} trials in all{grid}, "
            f"{done} there already; {self.max_workers} worker(s) × {self.threads} thread(s), sampler "
            f"{self.plan.sampler}, pruner {self.plan.pruner}; runs in {self.sweep_dir / TRIALS_DIR}"
        )
        if left == 0:
            print_line(f"nothing to run: the study has its {self.plan.trials} trials (raise --trials to run more)")

    def report(self, number: int) -> None:
        """A line for a trial that has just ended, and ``sweep.json`` brought up to date."""
        trials = self.study.get_trials(deepcopy=False)
        trial = next(t for t in trials if t.number == number)
        done = sum(counts_toward_total(t) and t.state.is_finished() for t in trials)
        elapsed = time.monotonic() - self.started
        print_line(progress_line(trial, done, self.plan.trials, best_trial(trials), elapsed, self.plan))
        self.write_summary(trials)

    def write_summary(self, trials: Sequence[Any]) -> dict[str, Any]:
        """``sweep.json`` from ``trials`` (the study's, as just read); what it holds."""
        result = summary(
            self.study, trials, self.spec.display, self.plan, self.command_for, str(self.sweep_dir / TRIALS_DIR)
        )
        write_json(self.sweep_dir / SUMMARY_FILE, result)
        return result

    # ---------------------------------------------------------------------------------- signals

    @contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        """Ctrl-C, SIGTERM, SIGHUP: stop starting trials, and pass each signal on to every worker."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.on_signal) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stopping is None:
            self.stopping = name
            running = sum(w.trial is not None for w in self.workers)
            with suppress(OSError):
                print(
                    f"\n{name} received: no new trial starts; the {running} running trial(s) stop after their step "
                    "and save last.pt (send it again to abort them at once)",
                    file=sys.stderr,
                    flush=True,
                )
        for worker in self.workers:
            with suppress(OSError):
                os.kill(worker.process.pid, signum)


def worker_context() -> Any:
    """Where workers come from: forked from a fork server that has imported torch once and run nothing
    (so a worker starts at once, with no other process's threads or locks), or, without fork
    servers (Windows), spawned as fresh interpreters."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo: what the first optimizer imports (4 s on a busy machine), once for every worker
    context.set_forkserver_preload(["mlp_torch.sweep.worker", "torch._dynamo"])
    return context


@contextmanager
def thread_environment(threads: int) -> Iterator[None]:
    """``OMP_NUM_THREADS`` (and MKL's) for a process started inside the block: read when it imports torch."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def exit_reason(code: int | None) -> str:
    """``ended with exit code 1`` or ``was killed by SIGKILL``."""
    if code is not None and code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"ended with exit code {code}"
