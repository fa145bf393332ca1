"""What the service agrees to sign: TUF metadata of the role the key serves, within limits.

The payload is the metadata's "signed" object. It is parsed with python-tuf's model (the
`Signed` subclass its `_type` names), so that the service signs only what a TUF client would
read as metadata, never an arbitrary blob, and the canonical bytes it signs are computed here,
from the parsed object, as `Metadata.signed_bytes` would.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tuf.api.metadata import Root, Signed, Snapshot, Targets, Timestamp
from tuf.api.metadata import Metadata

from hsmsign.canonical import canonical_json
from hsmsign.keys import KeyRecord, is_top_level
from hsmsign.service.errors import NotAcceptable
from hsmsign.service.policy import Client

SIGNED_TYPES: dict[str, type[Signed]] = {
    Root.type: Root, Targets.type: Targets, Snapshot.type: Snapshot, Timestamp.type: Timestamp,
}


@dataclass(frozen=True)
class Accepted:
    """Metadata the service will sign: its role, version and the canonical bytes to sign."""

    role: str
    version: int
    payload: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


def parse_signed(signed: object) -> Signed:
    """python-tuf's model of a "signed" object; `NotAcceptable` saying why it is not one.
    `signed` is consumed (python-tuf's `from_dict` pops what it reads): pass a fresh one."""
    if not isinstance(signed, dict):
        raise NotAcceptable('"signed" must be the JSON object of TUF metadata\'s signed part')
    kind = signed.get("_type")
    cls = SIGNED_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise NotAcceptable(f"_type {kind!r} is not TUF metadata (root, targets, snapshot or "
                            "timestamp); the service signs nothing else")
    try:
        return cls.from_dict(signed)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise NotAcceptable(f"not valid {kind} metadata ({type(e).__name__}: {e}); sign what "
                            "python-tuf's Metadata API writes") from None


def accept(signed: object, key: KeyRecord, client: Client, *,
           published: PublishedVersions | None = None) -> Accepted:
    """Check `signed` (consumed: parsed from the request for this call) against the key's role
    and the client's limits; the bytes to sign."""
    md = parse_signed(signed)
    role = key.role
    expected = role if is_top_level(role) else Targets.type  # delegations are targets metadata
    if md.type != expected:
        raise NotAcceptable(f"key {key.keyid[:7]} signs {role} metadata; this is {md.type} "
                            "metadata")
    now = datetime.now(timezone.utc)
    if md.expires <= now:
        raise NotAcceptable(f"the metadata expired at {md.expires:%Y-%m-%d %H:%M} UTC; set a "
                            "later expiry")
    if client.max_expires_days is not None:
        limit = now + timedelta(days=client.max_expires_days)
        if md.expires > limit:
            raise NotAcceptable(f"the metadata expires {md.expires:%Y-%m-%d %H:%M} UTC, later "
                                f"than {client.name}'s limit of {client.max_expires_days:g} days")
    payload = canonical_json(md.to_dict()).encode()  # the body had no floats: see app.py
    if client.repository is not None:
        (published or PublishedVersions()).check(client.repository, role, md.version, payload)
    return Accepted(role, md.version, payload)


class PublishedVersions:
    """The version of each role published in a repository's `metadata/`, read again whenever
    the directory changes (a file added or replaced changes its modification time)."""

    _VERSIONED = re.compile(r"^([0-9]+)\.(.+)\.json$")

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, dict[str, Path]]] = {}

    def check(self, repository: Path, role: str, version: int, payload: bytes) -> None:
        current = self._current(repository / "metadata", role)
        if current is None:
            return  # never published: any version may be the first
        path, published = current
        if version > published:
            return
        if version == published and self._same(path, payload):
            return  # another signature on what is published changes nothing
        raise NotAcceptable(f"{role} version {version} is not newer than the published version "
                            f"{published} in {repository}; bump the version")

    def _files(self, metadata: Path) -> dict[str, Path]:
        try:
            mtime = metadata.stat().st_mtime_ns
        except OSError:
            return {}
        cached = self._cache.get(metadata)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        latest: dict[str, tuple[int, Path]] = {}
        for entry in os.scandir(metadata):
            match = self._VERSIONED.match(entry.name)
            if match and int(match[1]) > latest.get(match[2], (-1, None))[0]:
                latest[match[2]] = (int(match[1]), Path(entry.path))
        files = {name: path for name, (_, path) in latest.items()}
        if (metadata / "timestamp.json").exists():
            files["timestamp"] = metadata / "timestamp.json"
        self._cache[metadata] = (mtime, files)
        return files

    def _current(self, metadata: Path, role: str) -> tuple[Path, int] | None:
        path = self._files(metadata).get(role)
        if path is None:
            return None
        try:
            return path, Metadata.from_file(str(path)).signed.version
        except Exception:  # noqa: BLE001 - unreadable published metadata: refuse, never guess
            raise NotAcceptable(f"the published {role} metadata {path} cannot be read; the "
                                "service cannot check the version against it") from None

    @staticmethod
    def _same(path: Path, payload: bytes) -> bool:
        return Metadata.from_file(str(path)).signed_bytes == payload
