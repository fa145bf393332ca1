"""The manifest: what a backup holds (key IDs, roles, the SHA-256 and size of each member),
parsed strictly, and the members of an archive checked against it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_string
from typing import TYPE_CHECKING, Any

from hsmsign.backup.format import (
    FORMAT,
    KEY_DIRS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    MAX_MEMBER_BYTES,
    ArchiveError,
    shown,
)
from hsmsign.errors import HsmsignError
from hsmsign.keystore.base import StoreKind

if TYPE_CHECKING:
    from hsmsign.backup.tar import TarContents

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_SORTED_JSON = json.JSONEncoder(sort_keys=True)


@dataclass(frozen=True)
class ManifestFile:
    name: str  # "private/<keyid>.key" or "public/<keyid>.pub"
    sha256: str
    size: int

    def to_json(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ManifestKey:
    keyid: str
    role: str
    gun: str | None
    algorithm: str
    store: str  # a StoreKind value: "file", "token", "yubikey", "kms"
    exported: bool  # False: a hardware key, listed for completeness
    files: tuple[ManifestFile, ...] = ()
    location: str | None = None  # hardware keys: token / slot, as `key list` shows it
    slot: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"keyid": self.keyid, "role": self.role, "gun": self.gun,
                               "algorithm": self.algorithm, "store": self.store,
                               "exported": self.exported}
        if self.exported:
            out["files"] = [f.to_json() for f in self.files]
        else:
            out["location"] = self.location
            out["slot"] = self.slot
            out["note"] = "hardware key: it cannot leave its token and is not in this archive"
        return out

    @property
    def key_file(self) -> ManifestFile:
        return next(f for f in self.files if f.name.startswith("private/"))


@dataclass(frozen=True)
class Manifest:
    created: str  # RFC 3339 UTC, seconds: "2025-01-31T12:00:00Z"
    hsmsign_version: str
    keys: tuple[ManifestKey, ...]
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict:
        return {**self._head(), "keys": [k.to_json() for k in self.keys]}

    def _head(self) -> dict:
        return {"format": FORMAT, "version": self.version, "created": self.created,
                "hsmsign_version": self.hsmsign_version}

    def to_bytes(self) -> bytes:
        """Canonical, readable and fast: sorted keys, one line per key."""
        head = json.dumps(self._head(), sort_keys=True)[:-1]
        lines = ",\n".join(_key_line(k) for k in self.keys)
        return f'{head}, "keys": [\n{lines}\n]}}\n'.encode()

    def files(self) -> dict[str, ManifestFile]:
        return {f.name: f for k in self.keys for f in k.files}

    @property
    def exported(self) -> list[ManifestKey]:
        return [k for k in self.keys if k.exported]

    @property
    def hardware(self) -> list[ManifestKey]:
        return [k for k in self.keys if not k.exported]

    @property
    def mtime(self) -> int:
        return int(datetime.strptime(self.created, "%Y-%m-%dT%H:%M:%SZ")
                   .replace(tzinfo=UTC).timestamp())


def _key_line(key: ManifestKey) -> str:
    """`json.dumps(key.to_json(), sort_keys=True)`. A file key's fields are fixed, so its line
    is filled in with json's own string escaping: a third of the time, which counts in a
    backup of 10,000 keys (bench/bench_backup.py). Hardware keys go through json.dumps."""
    if not key.exported:
        return _SORTED_JSON.encode(key.to_json())
    files = ", ".join(f'{{"name": {_json_string(f.name)}, "sha256": {_json_string(f.sha256)}, '
                      f'"size": {int(f.size)}}}' for f in key.files)
    gun = "null" if key.gun is None else _json_string(key.gun)
    return (f'{{"algorithm": {_json_string(key.algorithm)}, "exported": true, "files": [{files}], '
            f'"gun": {gun}, "keyid": {_json_string(key.keyid)}, "role": {_json_string(key.role)}, '
            f'"store": {_json_string(str(key.store))}}}')


def key_summary(key: ManifestKey) -> dict:
    """A key as the results of create and verify show it."""
    out = {"keyid": key.keyid, "role": key.role, "gun": key.gun, "algorithm": key.algorithm,
           "store": key.store, "exported": key.exported}
    if not key.exported:
        out["location"] = key.location
    return out


def _bad_manifest(why: str) -> ArchiveError:
    return ArchiveError(f"{MANIFEST_NAME} is invalid: {why}; the archive cannot be trusted")


def parse_manifest(data: bytes) -> Manifest:
    """A validated manifest; an `ArchiveError` saying what is wrong otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_manifest(f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad_manifest("not an hsmsign backup manifest")
    version = doc.get("version")
    if version != MANIFEST_VERSION:
        raise ArchiveError(
            f"unknown backup format version {version!r} (this hsmsign reads version "
            f"{MANIFEST_VERSION}); restore it with the hsmsign release that made it, or by hand "
            "with `age -d ARCHIVE | tar -x` (see docs/backup.md)"
        )
    created = doc.get("created")
    if not isinstance(created, str) or not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", created):
        raise _bad_manifest("'created' is not a UTC time like 2025-01-31T12:00:00Z")
    keys_doc = doc.get("keys")
    if not isinstance(keys_doc, list):
        raise _bad_manifest("'keys' is not a list")
    keys: list[ManifestKey] = []
    seen_keys: set[tuple[str, str]] = set()
    seen_files: set[str] = set()
    for n, k in enumerate(keys_doc):
        keys.append(_parse_key(k, n, seen_keys, seen_files))
    return Manifest(created=created, hsmsign_version=str(doc.get("hsmsign_version", "")),
                    keys=tuple(keys), version=version)


def _parse_key(k: Any, n: int, seen_keys: set, seen_files: set) -> ManifestKey:
    from hsmsign.keys import normalize_role

    where = f"key #{n + 1}"
    if not isinstance(k, dict):
        raise _bad_manifest(f"{where} is not an object")
    keyid = k.get("keyid")
    if not isinstance(keyid, str) or not _HEX64.match(keyid):
        raise _bad_manifest(f"{where} has no valid key ID")
    where = f"key {keyid[:16]}"
    role, gun, alg, store = k.get("role"), k.get("gun"), k.get("algorithm"), k.get("store")
    if not isinstance(role, str) or not isinstance(alg, str) or not isinstance(store, str):
        raise _bad_manifest(f"{where} lacks role, algorithm or store")
    if role != "unknown":
        try:
            normalize_role(role)
        except HsmsignError:
            raise _bad_manifest(f"{where} has an invalid role") from None
    if gun is not None and not isinstance(gun, str):
        raise _bad_manifest(f"{where} has an invalid gun")
    exported = k.get("exported")
    if not isinstance(exported, bool):
        raise _bad_manifest(f"{where} does not say whether it is exported")
    if (keyid, store) in seen_keys:
        raise _bad_manifest(f"{where} is listed twice")
    seen_keys.add((keyid, store))
    if not exported:
        location, slot = k.get("location"), k.get("slot")
        return ManifestKey(keyid, role, gun, alg, store, False, (),
                           location if isinstance(location, str) else None,
                           slot if isinstance(slot, str) else None)
    if store != StoreKind.FILE:
        raise _bad_manifest(f"{where} is exported but is not a file key")
    files_doc = k.get("files")
    if not isinstance(files_doc, list) or not files_doc:
        raise _bad_manifest(f"{where} lists no files")
    files = []
    for f in files_doc:
        if not isinstance(f, dict):
            raise _bad_manifest(f"{where} has a file entry that is not an object")
        name, digest, size = f.get("name"), f.get("sha256"), f.get("size")
        if name not in (f"private/{keyid}.key", f"public/{keyid}.pub"):
            raise _bad_manifest(f"{where} lists a file named {shown(name)}")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise _bad_manifest(f"{name} has no valid sha256")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MEMBER_BYTES:
            raise _bad_manifest(f"{name} has an invalid size")
        if name in seen_files:
            raise _bad_manifest(f"{name} is listed twice")
        seen_files.add(name)
        files.append(ManifestFile(name, digest, size))
    if not any(f.name.startswith("private/") for f in files):
        raise _bad_manifest(f"{where} lists no private key file")
    return ManifestKey(keyid, role, gun, alg, store, True, tuple(files))


def check_contents(contents: TarContents, *, what: str, deep: bool = True) -> Manifest:
    """Every member is what the manifest says, and the manifest's every file is there.

    `deep` also checks each key's members against each other: the key file's headers say
    the manifest's role and GUN, and the public key has the key ID in its name."""
    manifest = contents.manifest
    if manifest is None:
        raise ArchiveError(f"{what} has no {MANIFEST_NAME}: not an hsmsign backup")
    expected = manifest.files()
    for name in contents.dirs:
        if name not in ("", *KEY_DIRS):
            raise ArchiveError(f"member {shown(name)} is a directory an hsmsign backup does "
                               "not have: refused")
    for name in contents.ignored:
        raise ArchiveError(f"member {shown(name)} is not listed in the manifest: refused")
    for name, data in contents.files.items():
        if name == MANIFEST_NAME:
            continue
        listed = expected.get(name)
        if listed is None:
            raise ArchiveError(f"member {shown(name)} is not listed in the manifest: refused")
        if len(data) != listed.size:
            raise ArchiveError(f"member {shown(name)} is {len(data)} bytes but the manifest "
                               f"says {listed.size}: refused")
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            raise ArchiveError(f"member {shown(name)} does not match its SHA-256 in the "
                               "manifest: the archive was changed or is damaged")
    for name in expected:
        if name not in contents.files:
            raise ArchiveError(f"the manifest lists {name} but the archive does not hold it: "
                               "the archive is incomplete")
    if deep:
        for key in manifest.exported:
            _check_key_members(key, contents.files)
    return manifest


def _check_key_members(key: ManifestKey, files: dict[str, bytes]) -> None:
    """The key file's headers say the manifest's role, and the public key has the key's ID."""
    from hsmsign import pkcs8
    from hsmsign.keys import key_id, load_public_key_pem

    name = key.key_file.name
    try:
        block = pkcs8.read_private_key_pem(files[name])
    except pkcs8.KeyFormatError as e:
        raise ArchiveError(f"member {name} is not a key file ({e})") from None
    if not block.encrypted:
        raise ArchiveError(f"member {name} is a private key in the clear: refused (hsmsign "
                           "backs up only encrypted key files)")
    headers = {k.lower(): v for k, v in block.headers.items()}
    if headers.get("role", "unknown") != key.role or (headers.get("gun") or None) != key.gun:
        raise ArchiveError(f"member {name} says role {headers.get('role')!r} / gun "
                           f"{headers.get('gun')!r} but the manifest says {key.role!r} / "
                           f"{key.gun!r}: refused")
    public = f"public/{key.keyid}.pub"
    if public in files:
        try:
            actual = key_id(load_public_key_pem(files[public]))
        except HsmsignError:
            raise ArchiveError(f"member {public} is not a public key: refused") from None
        if actual != key.keyid:
            raise ArchiveError(f"member {public} holds key {actual[:16]}..., not the key its "
                               "name says: refused")
