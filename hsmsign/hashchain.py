"""A hash chain of JSON entries: each entry names the hash of the one before it.

The ceremony transcript and the signing service's audit log share it. An entry is a dict with
`"seq"` (1, 2, ...), `"prev"` (the hash of the entry before, `GENESIS` for the first) and
`"hash"`, the SHA-256 of the canonical JSON (securesystemslib's, as TUF signs) of the entry
without its hash. Editing, removing or reordering an entry breaks the chain where it happened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from hsmsign.canonical import canonical_json
from hsmsign.errors import HsmsignError

GENESIS = "0" * 64


class ChainBroken(HsmsignError):
    """An entry does not follow the one before it: `index` is its 1-based position, `edited`
    True when the entry itself was changed (else one is missing or out of order)."""

    def __init__(self, index: int, message: str, *, edited: bool = False):
        super().__init__(message)
        self.index = index
        self.edited = edited


def entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def link(entry: dict, seq: int, prev: str) -> dict:
    """`entry` with its place in the chain and its hash (in place, returned for chaining)."""
    entry["seq"] = seq
    entry["prev"] = prev
    entry["hash"] = entry_hash(entry)
    return entry


def check_chain(entries: Iterable[dict], *, what: str = "entry") -> str:
    """The last hash of an unbroken chain; `ChainBroken` at the first entry that breaks it."""
    prev = GENESIS
    for i, entry in enumerate(entries, 1):
        if entry.get("seq") != i or entry.get("prev") != prev:
            raise ChainBroken(i, f"{what} {i} is out of order or an entry before it is missing")
        if entry_hash(entry) != entry.get("hash"):
            raise ChainBroken(i, f"{what} {i} was edited afterwards (its hash does not match)",
                              edited=True)
        prev = entry["hash"]
    return prev
