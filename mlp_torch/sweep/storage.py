"""Where a study lives: an Optuna storage named by ``--storage``, or a journal file in the sweep directory.

* **Default: Optuna's journal file** ``SWEEP_DIR/study.journal`` (``JournalStorage`` with a
  ``JournalFileBackend``): every change to the study is one appended JSON line, written under a
  lock file, so several processes (and machines sharing the folder) can add trials to one study.
  Optuna recommends it over SQLite, which it "would never recommend for parallel optimization".
* ``--storage URL``: ``postgresql://…``, ``mysql://…``, ``sqlite:///…`` (Optuna's ``RDBStorage``,
  with heartbeats: a trial whose process stopped beating for :data:`GRACE_SECONDS` is marked
  failed by the next sweep that asks for a trial), ``redis://…`` (a journal in Redis), or a path
  (a journal file, e.g. on a shared file system).

Errors opening a storage (a missing database driver, a server that does not answer, a damaged
journal) become one line naming the storage, without its password.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError
from .plan import PRUNER_STARTUP_TRIALS, PRUNER_WARMUP_EPOCHS, SweepPlan, differences

DEFAULT_FILE = "study.journal"
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS  # three missed heartbeats: the process is gone
PLAN_KEY = "mlp_torch.sweep"  # the study's user attribute holding its SweepPlan.definition()
DRIVERS = {"postgresql": "psycopg2-binary", "mysql": "PyMySQL (and use mysql+pymysql://)"}


@dataclass(frozen=True)
class StorageSpec:
    """``--storage`` as given (``None``: the journal file in ``sweep_dir``); picklable, opened in each process."""

    url: str | None
    sweep_dir: Path

    @property
    def kind(self) -> str:
        if self.url is None or "://" not in self.url:
            return "journal"
        return "redis" if self.url.startswith(("redis://", "rediss://", "unix://")) else "rdb"

    @property
    def path(self) -> Path:
        """The journal file (for ``kind == "journal"``)."""
        return Path(self.url) if self.url is not None else self.sweep_dir / DEFAULT_FILE

    @property
    def display(self) -> str:
        """The storage for messages and ``sweep.json``: a URL's password is masked."""
        if self.kind == "journal":
            return str(self.path)
        assert self.url is not None
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy reads (redis://): mask what follows "user:"
            head, sep, tail = self.url.partition("://")
            creds, at, host = tail.rpartition("@")
            return f"{head}{sep}{creds.split(':')[0]}:***{at}{host}" if at else self.url

    def open(self) -> Any:
        """The Optuna storage; :class:`UsageError` (or :class:`DataError` for a damaged journal) if it cannot be."""
        try:
            with _quiet():
                return self._open()
        except (UsageError, DataError):
            raise
        except ModuleNotFoundError as err:
            scheme = (self.url or "").split("://")[0].split("+")[0]
            hint = f"; install it: pip install {DRIVERS[scheme]}" if scheme in DRIVERS else ""
            raise UsageError(f"--storage {self.display}: the driver is missing ({err}){hint}") from None
        except Exception as err:  # SQLAlchemy's and the drivers' errors, without their traceback
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--storage {self.display}: cannot open it ({type(err).__name__}: {first})") from None

    def _open(self) -> Any:
        import optuna

        if self.kind == "rdb":
            assert self.url is not None
            engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if self.url.startswith("sqlite") else {}
            return optuna.storages.RDBStorage(
                self.url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
            )
        from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

        if self.kind == "redis":
            return optuna.storages.JournalStorage(JournalRedisBackend(self.url or ""))
        path = self.path
        if path.is_dir():
            raise UsageError(f"--storage {path} is a folder; name a journal file (it is created if missing)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path))
        except OSError as err:
            raise UsageError(f"cannot create the journal file {path}: {err.strerror or err}") from None
        try:
            return optuna.storages.JournalStorage(backend)
        except (ValueError, KeyError) as err:  # a line that is not one of Optuna's log records
            raise DataError(f"{path} is not a readable Optuna journal ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without Optuna's "experimental feature" warnings (heartbeats are marked experimental)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_study(storage: Any, spec: StorageSpec, name: str, plan: SweepPlan, *, for_sampling: bool = True) -> Any:
    """Create the study ``name`` in ``storage``, or load it and check that it was made with the same plan.

    Args:
        storage: the storage ``spec`` opened (:meth:`StorageSpec.open`).
        spec: what it is, for messages.
        name: the study.
        plan: what this sweep trains; stored with a new study, compared with an existing one's.
        for_sampling: build the plan's sampler (the scheduler asks for trials); a worker only reports
            to the pruner, and gets a random sampler that does nothing on its own.

    Raises:
        UsageError: the study exists with another plan, or maximises nothing.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead of Optuna's
    sampler = make_sampler(plan) if for_sampling else optuna.samplers.RandomSampler()
    try:
        with _quiet():
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                direction="maximize",
                sampler=sampler,
                pruner=make_pruner(plan),
                load_if_exists=True,
            )
    except ValueError as err:  # e.g. a study of the same name made with another direction
        raise UsageError(f"--study {name} in {spec.display}: {err}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UsageError(f"--study {name} in {spec.display} minimises; a sweep maximises accuracy: name another study")
    saved = study.user_attrs.get(PLAN_KEY)
    now = plan.definition()
    if saved is None:
        study.set_user_attr(PLAN_KEY, now)
    elif saved != now:
        changes = differences(saved, now)
        raise UsageError(
            f"study {name!r} in {spec.display} was started with other settings ({'; '.join(changes[:3])}"
            f"{'; …' if len(changes) > 3 else ''}): rerun its own command to continue it, "
            "or name a new study with --study"
        )
    return study


def make_sampler(plan: SweepPlan) -> Any:
    """TPE (with the constant liar, so parallel workers do not all try the same point), random, or grid."""
    import optuna

    with _quiet():
        if plan.sampler == "grid":
            return optuna.samplers.GridSampler(plan.grid())
        if plan.sampler == "random":
            return optuna.samplers.RandomSampler()
        return optuna.samplers.TPESampler(constant_liar=True)


def make_pruner(plan: SweepPlan) -> Any:
    import optuna

    if plan.pruner == "none":
        return optuna.pruners.NopPruner()
    # steps are epochs counted from 0, so the warm-up leaves each seed's first epoch alone
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)


def fail_stale_trials(study: Any) -> None:
    """Mark failed the trials whose heartbeat stopped (RDB storages; a no-op for journals)."""
    import optuna

    with _quiet():
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every :data:`HEARTBEAT_SECONDS` while the block runs (RDB storages).

    What ``study.optimize`` does for its trials; a sweep asks and tells by hand, so it beats here.
    """
    interval = getattr(storage, "heartbeat_interval", None)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
