"""Private directories and atomic writes: temp file in the same directory, fsync, rename."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


PUBLIC_DIR_MODE = 0o755


def _make_dirs(path: Path, mode: int) -> None:
    """`path` and its missing parents, each with `mode` (pathlib gives parents the umask's)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue
        directory.chmod(mode)  # mkdir's mode passes through the umask


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; tighten it if it exists."""
    _make_dirs(path, PRIVATE_DIR_MODE)
    if (path.stat().st_mode & 0o777) != PRIVATE_DIR_MODE:
        path.chmod(PRIVATE_DIR_MODE)
    return path


def ensure_public_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0755 whatever the umask: a repository that
    others may read, and only its owner may change."""
    _make_dirs(path, PUBLIC_DIR_MODE)
    return path


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    _atomic(path, mode, lambda out: out.write(data))


def atomic_copy(source: Path, path: Path, mode: int) -> None:
    """Copy `source` to `path` as `atomic_write` writes."""
    def copy(out) -> None:
        with open(source, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    _atomic(path, mode, copy)


def _atomic(path: Path, mode: int, fill: Callable[[BinaryIO], object]) -> None:
    """`durable_temp`, renamed over `path`; on any failure, removed."""
    tmp = durable_temp(path, mode, fill)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def durable_temp(path: Path, mode: int, fill: Callable[[BinaryIO], object], *,
                 drop_cache: bool = False) -> Path:
    """A new temp file beside `path` (never one already there, never through a link) with
    `mode`, filled and fsynced; with `drop_cache`, dropped from the page cache too, so that
    reading it back reads the drive. On any failure it is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
            if drop_cache and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def read_no_follow(path: Path | str) -> bytes:
    """A file's bytes; a symbolic link (to who knows what) is refused (OSError ELOOP)."""
    return read_small_file(path, os.O_NOFOLLOW)


def read_small_file(path: Path | str, flags: int = 0) -> bytes:
    """A small file's bytes through plain system calls: for a home of 10,000 key files, a
    buffered file object per file costs more than the reading."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        chunks = [os.read(fd, 1 << 16)]  # a key file is far smaller: one read, then EOF
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) <= 2 else b"".join(chunks)  # one read: no copy of it


def sync_files(directory: str, paths: list[str]) -> None:
    """Make files in `directory` durable: one syncfs(2) of their file system where Linux has it
    (much faster than an fsync per file for a thousand files), else an fsync each."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
