"""Opening a run directory to continue it: its config, its lock, its leftovers, its data.

``train --resume RUN_DIR`` goes through these in order, each before the work it protects:

1. :func:`load_run_config`: ``config.json``, checked key by key (a hand edit gets one line);
2. :func:`open_for_resume`: take the run's lock (a second process resuming it is refused),
   delete the temporary files a killed save left, read ``checkpoints/last.pt``, all before any
   data are loaded;
3. :func:`check_same_data`: the data loaded now must be the ones the checkpoint was trained on
   (its shuffle order indexes them), compared by classes, per-split counts and a digest of the
   pixels and labels;
4. :func:`record_resumed_config`: a new ``--epochs`` goes into ``config.json``, so that an
   extension interrupted in turn resumes to the new total.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ..data import DataBundle, describe_data_change
from ..errors import DataError, UsageError
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .rundir import RunLock, remove_leftover_temp_files, write_json

# Stay as config.json has them when a run is resumed with other values: they belong to one session.
SESSION_KEYS = ("device", "cuda_graphs", "progress", "dist_timeout")


def load_run_config(run_dir: Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in ``run_dir/config.json``.

    Raises:
        UsageError: ``run_dir`` is not a run directory, or its config has an unknown key, a value
            of the wrong type or a value out of range (the message names the file and the key).
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file() or not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        raise UsageError(
            f"{run_dir} is not a run directory (it needs config.json and checkpoints/last.pt); "
            f"pass a folder such as runs/<date-time>_<name> made by mlp-torch train"
        )
    try:
        saved = json.loads(path.read_text())
        return TrainConfig.from_dict(saved["config"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not a valid run config ({type(err).__name__}: {err})") from None
    except UsageError as err:  # a hand-edited key of the wrong type or value
        raise UsageError(f"{path}: {err}") from None


def open_for_resume(run_dir: Path, epochs: int) -> tuple[RunLock, dict[str, Any]]:
    """Lock ``run_dir``, remove what a killed save left there, and read its ``last.pt``.

    Args:
        run_dir: the run to continue.
        epochs: the total the run is to reach; at least the epochs already done.

    Returns:
        the lock (release it when done) and the checkpoint.

    Raises:
        RunInUseError: another process is training ``run_dir``.
        CheckpointError: ``last.pt`` cannot be read.
        UsageError: ``epochs`` is fewer than the epochs done.
    """
    lock = RunLock(run_dir)
    try:
        removed = remove_leftover_temp_files(run_dir)
        if removed:
            note(f"removed {len(removed)} temporary file(s) left by an interrupted save, e.g. {removed[0]}")
        ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")
        if ckpt["epoch"] > epochs:
            raise UsageError(
                f"{run_dir} has already trained {ckpt['epoch']} epochs; --epochs {epochs} cannot undo them "
                "(pass at least that many)"
            )
    except BaseException:
        lock.release()
        raise
    return lock, ckpt


def check_same_data(run_dir: Path, ckpt: dict[str, Any], data: DataBundle) -> None:
    """Refuse to continue ``run_dir`` on data other than its checkpoint's.

    A checkpoint from before fingerprints were recorded is checked by its class names only, with
    a note saying so.

    Raises:
        DataError: what changed (classes, per-split counts, or the images themselves).
    """
    saved = ckpt.get("data_fingerprint")
    if saved is None:
        if list(ckpt["classes"]) == data.classes:
            note(f"{run_dir} predates data fingerprints: cannot check that its images are unchanged")
            return
        saved = {"classes": list(ckpt["classes"])}
    change = describe_data_change(saved, data.fingerprint())
    if change:
        raise DataError(
            f"cannot resume {run_dir}: the data changed since it was saved ({change}); "
            "put them back as they were, or start a new run"
        )


def record_resumed_config(run_dir: Path, config: TrainConfig, epochs_done: int) -> None:
    """Write ``config`` (its ``epochs``, its absolute paths) into ``run_dir/config.json``, atomically.

    Everything else in the file stays, ``device``, ``cuda_graphs`` and ``progress`` included.

    Raises:
        WriteError: the disk refused; the old ``config.json`` is intact.
    """
    path = Path(run_dir) / "config.json"
    info = json.loads(path.read_text())  # load_run_config has read it already
    old, new = info["config"], config.to_dict()
    new.update({key: old[key] for key in SESSION_KEYS if key in old})
    if new == old:
        return
    if old.get("epochs") != new["epochs"]:
        note(
            f"{run_dir}: {epochs_done} of now {new['epochs']} epochs done (was {old.get('epochs')}); "
            "the learning-rate schedule is re-stretched to the new total"
        )
    write_json(path, {**info, "config": new})


def note(text: str) -> None:
    """One line on stderr that must not stop the run if nobody can read it (a closed terminal)."""
    with contextlib.suppress(OSError):
        print(f"note: {text}", file=sys.stderr, flush=True)
