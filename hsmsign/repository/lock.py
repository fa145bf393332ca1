"""An exclusive lock on a repository for the length of one command."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from hsmsign.repository.layout import LOCK_FILE, LOCK_TIMEOUT_SECONDS, RepositoryError


class RepositoryLock:
    """An exclusive lock on a repository for the length of one command."""

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT_SECONDS):
        self.path = path / LOCK_FILE
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> RepositoryLock:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link planted in a cloned or shared repository
                raise RepositoryError(f"{self.path} is a symbolic link; remove it") from None
            raise
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    self._fd = None
                    raise RepositoryError(
                        f"another hsmsign process is changing {self.path.parent}; "
                        "try again when it has finished"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

