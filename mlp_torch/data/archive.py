"""Fetch an archive once and unpack it once: download -> verify md5 -> extract only its expected files.

Nothing is ever left half-done, and nothing in an archive decides where a file goes:

* A download goes to a private temporary ``.<name>.*.part`` file beside its target (so two processes
  that fetch into one data root never share one), is renamed into place only once its md5 matches,
  and is removed if anything, Ctrl-C included, stops it.
* Only the expected members are extracted, and only as regular files under their exact names (no
  links, devices, absolute paths or ``..``): with ``tarfile``'s ``data`` filter where this Python has
  it, and by copying the checked members' bytes where it does not (Python < 3.10.12, 3.11.0-3.11.3).
  They go into a temporary folder that is renamed into place once every one is out.

Standard library only, so this module runs on any Python that ``requires-python`` allows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from ..errors import DataError, DownloadError


class ArchiveLike(Protocol):
    """What this module needs to know about an archive (``cifar.ArchiveSpec`` is one)."""

    @property
    def name(self) -> str: ...  # "CIFAR-10"
    @property
    def url(self) -> str: ...
    @property
    def md5(self) -> str: ...
    @property
    def filename(self) -> str: ...  # cifar-10-python.tar.gz
    @property
    def folder(self) -> str: ...  # cifar-10-batches-py, the archive's top folder
    @property
    def members(self) -> tuple[str, ...]: ...  # the files expected in that folder


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def by_hand(spec: ArchiveLike, root: Path) -> str:
    """What to do instead: where to place the archive, or what to extract where."""
    return (
        f"download {spec.url} by hand and place it at {root / spec.filename} (md5 {spec.md5}), "
        f"or extract it so that {root / spec.folder}/ holds {', '.join(spec.members)}; then rerun"
    )


def is_complete(spec: ArchiveLike, root: Path) -> bool:
    folder = root / spec.folder
    return all((folder / m).is_file() for m in spec.members)


def download(spec: ArchiveLike, root: Path, timeout: float) -> Path:
    """Fetch ``spec.url`` into a private ``.part`` file in ``root``, check its md5, rename it into place."""
    target = root / spec.filename
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=root)
    except OSError as err:
        raise DownloadError(f"could not download {spec.name} ({err}); {by_hand(spec, root)}") from None
    part = Path(name)
    try:
        digest = hashlib.md5()
        print(f"downloading {spec.name} from {spec.url} to {target}", file=sys.stderr)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != spec.md5:
            raise DownloadError(
                f"{spec.name} download from {spec.url} has md5 {digest.hexdigest()}, expected "
                f"{spec.md5} (truncated or wrong file, deleted); {by_hand(spec, root)}"
            )
        os.chmod(part, 0o644)  # mkstemp made it private; the archive is public data
        os.replace(part, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"could not download {spec.name} ({reason}); {by_hand(spec, root)}") from None
    except BaseException:  # a wrong md5, Ctrl-C, SIGTERM: never leave the part behind
        part.unlink(missing_ok=True)
        raise
    return target


def expected_members(tar: tarfile.TarFile, spec: ArchiveLike, archive: Path, root: Path) -> list[tarfile.TarInfo]:
    """The archive's ``folder/member`` entries, each checked to be one regular file; everything else is left in it.

    Matching the exact expected names rules out absolute paths and ``..``; ``isreg`` rules out links,
    devices and folders posing as a member.
    """
    wanted = {f"{spec.folder}/{m}" for m in spec.members}
    found: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        if member.name not in wanted:
            continue
        if not member.isreg():
            raise DataError(
                f"{archive} is not the {spec.name} archive: its {member.name} is a link, device or folder, "
                f"not a regular file; {by_hand(spec, root)}"
            )
        if member.name in found:
            raise DataError(
                f"{archive} is not the {spec.name} archive: it holds {member.name} twice; {by_hand(spec, root)}"
            )
        found[member.name] = member
    missing = wanted - set(found)
    if missing:
        raise DataError(
            f"{archive} is not the {spec.name} archive: it lacks {', '.join(sorted(missing))}; {by_hand(spec, root)}"
        )
    return [found[name] for name in sorted(found)]


def _copy_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Write each checked regular member's bytes to ``dest / name``; no mode, owner or link from the archive."""
    for member in members:
        target = dest / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        if source is None:  # cannot happen for a regular file; refuse rather than write nothing
            raise tarfile.ExtractError(f"{member.name} has no data")
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)


def extract(spec: ArchiveLike, archive: Path, root: Path) -> None:
    """Extract the expected members into a temporary folder, then rename it to ``root/spec.folder``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = expected_members(tar, spec, archive, root)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # this Python has no extraction filters: the members were checked above, copy their bytes
                _copy_members(tar, members, tmp)
        try:
            os.replace(tmp / spec.folder, root / spec.folder)
        except OSError:
            if not is_complete(spec, root):  # else another process extracted it first: use that
                raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive} is corrupt ({err}); delete it and {by_hand(spec, root)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_extracted(spec: ArchiveLike, root: Path, timeout: float = 10.0, allow_download: bool = True) -> Path:
    """Return ``root/spec.folder`` with every member present, downloading and extracting only if needed.

    Args:
        spec: which archive.
        root: the data root (``--data-root``).
        timeout: seconds to wait on the network before giving up with instructions.
        allow_download: ``False`` (eval, predict, ``--resume``): a missing archive is an error
            saying where to place it, never a download.

    Raises:
        DownloadError: the download failed or the archive is corrupt or has the wrong md5.
        DataError: the archive is missing and may not be downloaded, or is not the expected archive.
    """
    folder = root / spec.folder
    if is_complete(spec, root):
        return folder
    if folder.exists():
        raise DataError(f"{folder} exists but lacks some of {', '.join(spec.members)}; delete it and rerun")
    archive = root / spec.filename
    if archive.is_file():
        actual = file_md5(archive)
        if actual != spec.md5:
            again = " (it will be downloaded again)" if allow_download else ""
            raise DownloadError(
                f"{archive} has md5 {actual}, expected {spec.md5}; delete it{again} or {by_hand(spec, root)}"
            )
        extract(spec, archive, root)
        return folder
    if not allow_download:
        raise DataError(
            f"{spec.name} is not in {root} (neither {folder}/ nor {archive} exists) and is not downloaded here; "
            f"place the official archive at {archive} (md5 {spec.md5}), or pass --data-root DIR where it is"
        )
    archive = download(spec, root, timeout)
    try:
        extract(spec, archive, root)
    except DataError:
        archive.unlink(missing_ok=True)  # we fetched it, it is useless: do not make the user delete it
        raise
    return folder
