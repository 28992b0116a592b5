"""The run directory: a fresh folder per run, the files that describe it (strict JSON), and the lock
that keeps a second process from training it at the same time."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch

from .. import __version__
from ..errors import RunInUseError, UsageError, WriteError
from ..utils import atomic_write, leftover_temp_files

STAMP = "%Y%m%d-%H%M%S"
# A file name has at most 255 bytes on every common file system; the date-time stamp, "_" and a
# "-NNN" suffix for runs started within one second take 20 of them.
MAX_NAME_BYTES = 255 - len("20260101-000000_") - len("-999")
LOCK_FILE = ".lock"


def check_runs_dir(runs_dir: Path) -> None:
    """Refuse, before any data are loaded, a ``--runs-dir`` that cannot hold a new run.

    The folder need not exist yet; its nearest existing ancestor must be a folder this process may
    create folders in (a read-only file system counts as not writable).

    Raises:
        UsageError: a file is in the way, or writing there is not permitted.
    """
    existing = Path(os.path.abspath(runs_dir))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--runs-dir {runs_dir}: {existing} is a file, not a folder; pass a folder for the runs")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--runs-dir {runs_dir}: no permission to create folders in {existing}; pass another folder")


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """A new ``runs_dir/<name>_<date-time>`` folder; never reuses an existing one.

    The name comes first: TensorBoard lists runs by folder name and cuts long ones short, and
    the part that tells runs apart must be the part shown.

    Raises:
        WriteError: the folder could not be created (the disk, permissions).
    """
    stamp = datetime.now().strftime(STAMP)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            candidate = runs_dir / (f"{name}_{stamp}" + (f"-{attempt}" if attempt else ""))
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as err:
        raise WriteError(f"cannot create a run directory under {runs_dir}: {err.strerror or err}") from None
    raise UsageError(f"could not create a new run directory under {runs_dir}")


class RunLock:
    """An exclusive lock on a run directory while this process trains it (on the empty file ``RUN_DIR/.lock``).

    ``fcntl.flock`` belongs to the open file, and the kernel drops it when the process ends, however
    it ends: a lock left by a killed run never blocks the next one. The file itself never changes,
    so a run directory stays byte for byte as it was when a resume is refused. Where ``fcntl`` does
    not exist (Windows) there is no lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file: IO[bytes] | None = None
        try:
            import fcntl
        except ImportError:
            return
        try:
            f = open(self.path, "ab")  # held open for the lock's lifetime
        except OSError as err:
            raise WriteError(f"cannot create the lock file {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            pid = _flock_holder(self.path)
            raise RunInUseError(
                f"{run_dir} is being trained by another process{f' (pid {pid})' if pid else ''}; "
                "wait for it to end, or stop it (Ctrl-C or kill PID saves last.pt) and resume then"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts): go on unlocked
            f.close()
            print(f"note: cannot lock {self.path} ({err.strerror or err}); do not resume it twice", file=sys.stderr)
            return
        self._file = f

    def release(self) -> None:
        """Give the lock up (closing the file releases it); safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _flock_holder(path: Path) -> int | None:
    """The pid holding a ``flock`` on ``path``, read from ``/proc/locks`` (Linux); ``None`` if unknown."""
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:2146372 0 EOF" (waiters: "1: -> FLOCK ...")
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == file_id and fields[4].isdigit():
            return int(fields[4])
    return None


def remove_leftover_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed save left in ``run_dir`` and ``run_dir/checkpoints``.

    Call it only while holding the run's :class:`RunLock`: then no other process is writing there.
    Returns the files removed.
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for path in leftover_temp_files(folder):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as strict, indented JSON to ``path``, atomically.

    Raises:
        WriteError: the disk refused (full, a file-size limit, permissions); any old ``path`` is intact.
    """
    text = json.dumps(nan_to_none(value), indent=2, allow_nan=False, default=json_default) + "\n"
    try:
        with atomic_write(path) as f:
            f.write(text.encode())
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import tensorboard
    import torchvision

    return {
        "mlp_torch": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tensorboard": tensorboard.__version__,
        "python": platform.python_version(),
    }


def nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
