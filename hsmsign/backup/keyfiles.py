"""Reading every file key of a home for a backup, on two cores when the home is large.

Reading and checking one key's files (two small files, the PEM headers, the public key) costs
~25 us of Python, most of what a backup of 10,000 keys does (bench/bench_backup.py). For a
large home a forked child (`forked.Forked`) reads the second half of the keys while this
process reads the first. The keys come out in the same order, with the same first error, as
reading them one by one; if the child cannot run or fails, this process reads its half too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hsmsign.backup.forked import ChildFailed, Forked
from hsmsign.keys import KeyRecord
from hsmsign.keystore.file import STORE, FileKeyStore, KeyFileError, KeyFileFault, KeyFiles

PARALLEL_MIN = 2000  # keys before a second process pays for its fork and the hand-over


def read_key_files(files: FileKeyStore, keyids: list[str], *,
                   parallel_min: int = PARALLEL_MIN) -> Iterator[KeyFiles]:
    """`files.each_key_files(keyids)`, the second half read at the same time by a child
    process when there are at least `parallel_min` keys."""
    if len(keyids) < parallel_min:
        yield from files.each_key_files(keyids)
        return
    half = len(keyids) // 2
    child = Forked.start(_read_for_handover, files, keyids[half:])
    try:
        yield from files.each_key_files(keyids[:half])
        read = child.result() if child else None
    except ChildFailed:
        read = None
    finally:
        if child:
            child.stop()
    if read is None:
        yield from files.each_key_files(keyids[half:])
        return
    for item in read:
        if len(item) == 3:  # the child stopped at this key's fault
            path, fault, detail = item
            raise KeyFileError(Path(path), KeyFileFault(fault), detail)
        keyid, role, gun, algorithm, location, private, public = item
        yield KeyFiles(KeyRecord(keyid, role, gun, algorithm, STORE, location), private, public)


def _read_for_handover(files: FileKeyStore, keyids: list[str]) -> list[tuple]:
    """In the child: each key's files as a plain tuple, and a fault as a 3-tuple where the
    reading stopped."""
    out: list[tuple] = []
    try:
        for found in files.each_key_files(keyids):
            r = found.record
            out.append((r.keyid, r.role, r.gun, r.algorithm, r.location, found.private,
                        found.public))
    except KeyFileError as e:
        out.append((str(e.path), e.fault.value, e.detail))
    return out
