"""The audit log: one JSON line per request, hash-chained (`hsmsign.hashchain`), fsynced.

Each line is a JSON object with `time`, `client`, `peer`, `keyid`, `role`, `version`, `sha256`
(of the canonical bytes signed), `result` ("signed" or the refusal) and `reason`, plus the
chain's `seq`, `prev` and `hash`.

A signature is answered only after its line is written to the file (so a crash of the service
loses no line), and the file is fsynced in the background, one fsync after another, each
covering every line written before it started. An fsync takes milliseconds on a disk (5 ms on
the machine of bench/README.md) and would otherwise cap 8 clients at ~1,500 signatures/s; what a
power cut can lose is the lines of the last fsync interval. An fsync that fails stops all
signing until the service is restarted.
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
        self._dirty = False  # lines written since the last fsync began
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
        """Append `entry`, chained here in call order, to the file (fsynced soon after)."""
        if self._failed:
            raise AuditLogError(self._failed)
        entry = link({"time": now_text(), **entry}, self._seq + 1, self._prev)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            self._fail(e)
        self._seq, self._prev = entry["seq"], entry["hash"]
        self._dirty = True
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.get_running_loop().create_task(self._sync())
        return entry

    def _fail(self, e: OSError):
        # Lines may be missing from the file now: nothing more may be signed.
        self._failed = (f"the audit log {self.path} cannot be written ({e.strerror}); nothing "
                        "is signed until the service is restarted")
        raise AuditLogError(self._failed) from None

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            self._dirty = False
            try:
                await loop.run_in_executor(None, os.fsync, self._fd)
            except OSError as e:
                try:
                    self._fail(e)
                except AuditLogError:
                    return

    async def drain(self) -> None:
        """Wait until every line written is fsynced."""
        while self._syncer is not None and not self._syncer.done():
            await self._syncer
        if self._dirty and not self._failed:
            os.fsync(self._fd)
            self._dirty = False

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
