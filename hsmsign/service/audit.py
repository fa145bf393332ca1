"""The audit log: one JSON line per request, hash-chained (`hsmsign.hashchain`), fsynced.

Each line is a JSON object with `time`, `client`, `peer`, `keyid`, `role`, `version`, `sha256`
(of the canonical bytes signed), `result` ("signed" or the refusal) and `reason`, plus the
chain's `seq`, `prev` and `hash`.

An answer is sent only after the fsync that covers its line (`durable`), so neither a crash
nor a power cut can lose the record of a signature that went out. Lines are written and fsynced
in groups (group commit) on a thread of their own: one write-and-fsync runs at a time and takes
every line recorded before it started, so concurrent requests share one fsync (~5 ms on the
disk of bench/README.md), and the event loop never blocks on the file (a write to a file that
is being fsynced waits for the fsync). A write or fsync that fails stops all signing until the
service is restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from hsmsign.errors import HsmsignError
from hsmsign.hashchain import GENESIS, ChainBroken, check_chain, entry_hash, link

TAIL_BYTES = 1 << 16


class AuditLogError(HsmsignError):
    """The audit log cannot be opened, continued or written."""


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """An append-only, hash-chained log that continues an existing one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise AuditLogError(f"cannot open the audit log {self.path} ({e.strerror}); give a "
                                "writable --audit-log FILE") from None
        try:
            self._seq, self._prev = self._last()
        except BaseException:
            os.close(self._fd)
            raise
        self._pending = bytearray()  # lines recorded, not yet handed to the writer
        self._synced = self._seq  # every line up to this seq is on disk
        self._synced_event = asyncio.Event()  # set, then replaced, after each fsync
        self._syncer: asyncio.Task | None = None
        self._failed: str | None = None

    def _last(self) -> tuple[int, str]:
        """The seq and hash of the log's last entry, checked (the whole chain: `verify_log`)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0, GENESIS
        with open(self.path, "rb") as f:
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
        if not tail.endswith(b"\n"):
            raise AuditLogError(f"the audit log {self.path} ends with an incomplete line (a crash "
                                "while writing?); check it with `hsmsign serve verify-log`, move "
                                "it aside, and start with a new log")
        try:
            last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
            if entry_hash(last) != last["hash"]:
                raise ValueError("hash")
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(f"the last entry of the audit log {self.path} is damaged; check "
                                "it with `hsmsign serve verify-log`, move it aside, and start "
                                "with a new log") from None

    def record(self, entry: dict) -> dict:
        """Chain `entry` here, in call order, and queue its line for the next group; await
        `durable(entry)` before answering."""
        if self._failed:
            raise AuditLogError(self._failed)
        entry = link({"time": now_text(), **entry}, self._seq + 1, self._prev)
        self._pending += json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        self._seq, self._prev = entry["seq"], entry["hash"]
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.get_running_loop().create_task(self._sync())
        return entry

    def _write_and_fsync(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            # Lines may be missing from the file now: nothing more may be signed.
            self._failed = (f"the audit log {self.path} cannot be written ({e.strerror}); "
                            "nothing is signed until the service is restarted")

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and not self._failed:
            data, covered = bytes(self._pending), self._seq
            self._pending.clear()
            await loop.run_in_executor(None, self._write_and_fsync, data)
            if not self._failed:
                self._synced = covered
            event, self._synced_event = self._synced_event, asyncio.Event()
            event.set()

    async def durable(self, entry: dict) -> None:
        """Return once `entry` (from `record`) is written and fsynced; AuditLogError if it
        cannot be."""
        while self._synced < entry["seq"]:
            if self._failed:
                raise AuditLogError(self._failed)
            await self._synced_event.wait()

    async def drain(self) -> None:
        """Wait until every line recorded is written and fsynced."""
        while self._syncer is not None and not self._syncer.done():
            await self._syncer
        if self._pending and not self._failed:
            data = bytes(self._pending)
            self._pending.clear()
            self._write_and_fsync(data)

    def close(self) -> None:
        os.close(self._fd)


def verify_log(path: Path) -> tuple[int, str]:
    """The number of entries and the last hash of an unbroken log; `ChainBroken` with the line
    of the first break."""
    def entries():
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    raise ChainBroken(i, f"line {i} is incomplete (cut short while written)")
                try:
                    entry = json.loads(raw)
                except ValueError:
                    raise ChainBroken(i, f"line {i} is not JSON") from None
                if not isinstance(entry, dict):
                    raise ChainBroken(i, f"line {i} is not a log entry")
                yield entry

    count = 0

    def counted():
        nonlocal count
        for entry in entries():
            count += 1
            yield entry

    try:
        last = check_chain(counted(), what="line")
    except OSError as e:
        raise AuditLogError(f"cannot read the audit log {path} ({e.strerror})") from None
    return count, last
