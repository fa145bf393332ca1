"""A function run in a forked child on the second core, its result read back over a pipe.

A backup is CPU work in Python (reading and checking 10,000 key files, decrypting the archive
to check it), and Python runs one thread at a time: a child process is how it uses a second
core. The child is a copy of this process, so it needs nothing sent to it; it sends back
only what its function returns (marshal: str, bytes, numbers, tuples, lists, None), then
exits without running anything of this process's (`os._exit`).
"""

from __future__ import annotations

import marshal
import os
import signal
import threading
from collections.abc import Callable
from typing import Any


class ChildFailed(Exception):
    """The child died, or its function raised: do the work here instead."""


class Forked:
    """`fn(*args)` running in a child process; `result()` waits for what it returned."""

    def __init__(self, pid: int, pipe: int):
        self._pid: int | None = pid
        self._pipe: int | None = pipe

    @classmethod
    def start(cls, fn: Callable[..., Any], *args: Any) -> Forked | None:
        """The running child, or None where there is none to be had: no fork on this system,
        the system refuses one, or other threads run here (a fork copies only the calling
        thread, and one of the others could hold a lock the child needs)."""
        if not hasattr(os, "fork") or threading.active_count() > 1:
            return None
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:  # the child: never returns into the caller's code
            status = 1
            try:
                os.close(read_end)
                data = marshal.dumps(fn(*args))
                with open(write_end, "wb") as pipe:
                    pipe.write(data)
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        return cls(pid, read_end)

    def result(self) -> Any:
        """What the function returned; `ChildFailed` if the child did not finish it."""
        try:
            with open(self._pipe, "rb", closefd=False) as pipe:
                data = pipe.read()
            _, status = os.waitpid(self._pid, 0)
            self._pid = None
            if status != 0:
                raise ChildFailed(f"exit status {status}")
            try:
                return marshal.loads(data)
            except (EOFError, ValueError, TypeError):
                raise ChildFailed("unreadable result") from None
        finally:
            self.stop()

    def stop(self) -> None:
        """Close the pipe and end the child if it still runs (the caller stopped early)."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self._pid, 0)
            self._pid = None
