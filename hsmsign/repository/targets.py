"""Target paths and descriptions: from files, from hashes, and from manifests (JSON or CSV)."""

from __future__ import annotations

import binascii
import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import TargetFile

from hsmsign.errors import HsmsignError
from hsmsign.repository.layout import TARGETS_DIR, RepositoryError

_TARGET_PATH = re.compile(r"^[^/\\\x00][^\\\x00]*$")


def check_target_path(path: str) -> str:
    """A target path as TUF expects it: relative, '/'-separated, no '..' segments."""
    # Fast path (a manifest's 100,000 paths are each checked twice): no backslash or NUL, no
    # '/' first or last, no '//' and no segment starting with '.' is valid; the rest is
    # checked in full below.
    if (isinstance(path, str) and path and path[0] not in "/." and path[-1] != "/"
            and "//" not in path and "/." not in path and "\\" not in path and "\x00" not in path):
        return path
    if not path or not _TARGET_PATH.match(path) or path.endswith("/") or any(
        part in ("", ".", "..") for part in path.split("/")
    ):
        raise RepositoryError(
            f"invalid target path {path!r}: use a relative path like 'app/v1.0.tar.gz' "
            "without '..', '//' or a leading '/'"
        )
    return path


@dataclass
class TargetChanges:
    """What `add_targets` did: new paths, paths given new lengths or hashes, and the rest."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0


@dataclass
class TargetUpload:
    """A target file to copy into `targets/` under its hash-prefixed name."""

    source: Path
    destination: Path


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _is_sha256_hex(value) -> bool:
    """`_HEX64.fullmatch(value)` for any value, in a third of the time (a manifest has
    100,000 of them): 64 characters, no upper case, and nothing but hex digits."""
    if type(value) is not str or len(value) != 64 or not (value.islower() or value.isdigit()):
        return False
    try:
        binascii.a2b_hex(value)  # strict: hex digits only (and ASCII), no spaces or signs
    except (binascii.Error, ValueError):
        return False
    return True


def _sha256_hex(value: str, where: str) -> str:
    value = value.strip().lower()
    if not _HEX64.match(value):
        raise HsmsignError(f"{where}: sha256 must be 64 hex characters")
    return value


def _length(value, where: str) -> int:
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise HsmsignError(f"{where}: length must be a whole number of bytes") from None
    if length < 0:
        raise HsmsignError(f"{where}: length must not be negative")
    return length


def target_from_hash(path: str, length: int, sha256: str, custom: dict | None = None) -> TargetFile:
    check_target_path(path)
    return TargetFile(_length(length, path), {"sha256": _sha256_hex(sha256, path)}, path,
                      unrecognized_fields={"custom": custom} if custom else None)


def target_from_file(path: str, file: Path, repo: Path) -> tuple[TargetFile, TargetUpload]:
    """The target for `file`, and where a consistent-snapshot client will fetch it."""
    check_target_path(path)
    digest = hashlib.sha256()
    length = 0
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            length += len(chunk)
    sha256 = digest.hexdigest()
    directory, _, name = path.rpartition("/")
    destination = repo / TARGETS_DIR / directory / f"{sha256}.{name}"
    return TargetFile(length, {"sha256": sha256}, path), TargetUpload(file, destination)


def targets_from_manifest(manifest: Path) -> list[TargetFile]:
    """Targets from `{"path": {"length": N, "hashes": {"sha256": hex}, "custom": {}}}` or a CSV
    with the header `path,length,sha256`."""
    text = manifest.read_text()
    if text.lstrip().startswith(("{", "[")) or manifest.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
        except ValueError as e:
            raise HsmsignError(f"{manifest} is not valid JSON ({e})") from None
        if not isinstance(entries, dict):
            raise HsmsignError(f"{manifest}: a JSON manifest is an object shaped like TUF's "
                               '"targets": {"PATH": {"length": N, "hashes": {"sha256": "HEX"}}}')
        if not entries:
            raise HsmsignError(f"{manifest} lists no targets; nothing changed")
        out = []
        for path, entry in entries.items():
            if not isinstance(entry, dict) or "hashes" not in entry or "length" not in entry:
                raise HsmsignError(f"{manifest}: {path!r} needs 'length' and 'hashes'")
            hashes = entry["hashes"]
            if not isinstance(hashes, dict) or "sha256" not in hashes:
                raise HsmsignError(f"{manifest}: {path!r} needs a sha256 hash")
            sha256 = hashes["sha256"]
            if len(hashes) == 1 and _is_sha256_hex(sha256):
                # Already the dict target_from_hash would build: keep it (one dict fewer for
                # each of a manifest's 100,000 entries). Same checks, same order.
                check_target_path(path)
                custom = entry.get("custom")
                length = entry["length"]
                if type(length) is not int or length < 0:
                    length = _length(length, path)
                out.append(TargetFile(length, hashes, path,
                                      unrecognized_fields={"custom": custom} if custom else None))
                continue
            out.append(target_from_hash(path, entry["length"], sha256, entry.get("custom")))
        return out
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames][:3] != ["path", "length", "sha256"]:
        raise HsmsignError(f"{manifest}: a CSV manifest starts with the header path,length,sha256")
    out = [target_from_hash(row["path"].strip(), row["length"], row["sha256"],)
           for row in reader]
    if not out:
        raise HsmsignError(f"{manifest} lists no targets; nothing changed")
    return out
