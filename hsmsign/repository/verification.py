"""Checking a repository as a TUF client would, and saying who must still sign what.

`check_signatures` is the one check of a role's signatures against its delegator's keys;
reading a file uses it, and so does `check_references`, run by every write before it writes.
`verify` feeds the files on disk, in the order a client fetches them, to python-tuf's own
client-side validator (`TrustedMetadataSet`, what `ngclient.Updater` uses), starting from
`1.root.json` or a root the user trusts. `status` reads without judging: versions, expiry,
thresholds, who signed and who has not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from securesystemslib.signer import Key
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType

from hsmsign.keys import TOP_LEVEL_ROLES
from hsmsign.repository.layout import RepositoryError, metadata_filename, now
from hsmsign.signing import valid_signers

if TYPE_CHECKING:  # the repository calls `verify` before it writes: no import cycle at run time
    from hsmsign.repository.storage import RepositoryStorage as HsmsignRepository


def _fewer_keys_than_threshold(role: str, keys: int, threshold: int) -> str | None:
    if keys < threshold:
        return (f"role {role} has fewer keys than its threshold of {threshold}; "
                "it will not be usable until keys are added to it")
    return None


def _explain(role: str, error: Exception) -> str:
    if isinstance(error, tuf_errors.UnsignedMetadataError):
        return (f"valid signatures did not meet threshold for {role} ({error}); "
                f"sign it with `hsmsign sign REPO {role}` where the missing keys are")
    if isinstance(error, tuf_errors.ExpiredMetadataError):
        return f"{role} metadata has expired ({error}); re-sign it with `hsmsign repo refresh`"
    if isinstance(error, tuf_errors.BadVersionNumberError):
        return f"{role} metadata has the wrong version ({error}): a rollback or a stale file"
    if isinstance(error, tuf_errors.LengthOrHashMismatchError):
        return f"{role} metadata does not match what snapshot/timestamp say of it ({error})"
    if isinstance(error, tuf_errors.RepositoryError):
        return f"{role} metadata does not verify: {error}"
    return f"{role} metadata cannot be read: {error}"


def check_signatures(path: Path, role: str, md: Metadata, keys: dict[str, Key],
                     remedy: str = "restore it") -> set[str]:
    """The key IDs of `keys` whose signatures on `md` verify. A signature by one of `keys`
    that does not verify means the signed part changed after it was signed: an error naming
    the file, whatever the other signatures say (a client would drop that signature)."""
    good = set(valid_signers(md, keys))
    bad = sorted(k for k in md.signatures if k in keys and k not in good)
    if bad:
        raise RepositoryError(
            f"{path} ({role} v{md.signed.version}) has a signature by {bad[0][:7]} that does not "
            f"verify: the file was changed after it was signed; {remedy}"
        )
    return good


def check_references(repo: HsmsignRepository, signed_here: set[str]) -> None:
    """Before a command writes: every role the repository will reference after it (root,
    timestamp, snapshot, and each role the snapshot lists and a delegator still delegates)
    that this command did not sign itself is read and checked against its delegator's keys
    as they will be published. A new snapshot or timestamp must never vouch for a file that
    was changed by hand (issue 13); what this command signed was checked as it was signed,
    so a large targets file just signed is not verified twice.

    Reading a role (`RepositoryStorage.open`) already checks its type, the version snapshot
    or timestamp gives, and its signatures; what is left is a signature by a key the delegator
    added in this command. Thresholds are not judged here: a role read from `staged/` is short
    of its threshold by design, and what goes into `metadata/` is judged, thresholds included,
    by `publication` with python-tuf's validator. This check holds where that one lets a write
    through: a repository that did not verify before the command (as a tampered one does not),
    and roles that are not below the ones written (`repo refresh --role timestamp`).
    """
    snapshot = repo.open("snapshot").signed
    parents = repo.parents()  # reads (and so checks) every role reachable from targets
    listed = [name[: -len(".json")] for name in snapshot.meta] if snapshot.version else []
    for role in ["root", "timestamp", "snapshot",
                 *(r for r in listed if r == "targets" or r in parents)]:
        if role in signed_here:
            continue
        md = repo.open(role)
        keys, _ = repo.role_keys(role, md if role == "root" else None)
        checked = repo.keys_checked(role)
        unchecked = {k: key for k, key in keys.items() if k not in checked and k in md.signatures}
        if unchecked:
            repo.check_role_signatures(role, md, unchecked)


@dataclass
class Verified:
    root_version: int
    roles: dict[str, int] = field(default_factory=dict)  # role -> version verified

    def to_json(self) -> dict:
        return {"ok": True, "root_version": self.root_version, "roles": self.roles}


def verify(repo: HsmsignRepository, trusted_root: bytes | None = None, *,
           overlay: dict[str, bytes] | None = None,
           only: Callable[[str], bool] | None = None) -> Verified:
    """Verify every role like a client; RepositoryError with a clear message on the first failure.

    `overlay`: metadata files (name -> bytes) to read instead of, or beside, those in
    `metadata/`: what `metadata/` would be after a write, checked before it is made. `only`:
    which targets roles to load below `targets` (a role is descended into when `only` says so;
    root, timestamp, snapshot and targets are always checked).
    """
    repo.require()
    overlay = overlay or {}
    read = lambda name: overlay[name] if name in overlay else _read_bytes(repo, name)  # noqa: E731
    exists = lambda name: name in overlay or (repo.metadata_dir / name).exists()  # noqa: E731
    step = "root"
    version = None  # the root version being checked against the one trusted before it
    given = None  # the trusted root's own version, when one was given
    try:
        trusted = TrustedMetadataSet(trusted_root or read("1.root.json"), EnvelopeType.METADATA)
        given = trusted.root.version if trusted_root is not None else None
        version = trusted.root.version + 1
        while exists(metadata_filename("root", version)):
            trusted.update_root(read(metadata_filename("root", version)))
            version += 1
        step = "timestamp"
        trusted.update_timestamp(read("timestamp.json"))
        step = "snapshot"
        trusted.update_snapshot(read(metadata_filename("snapshot",
                                                       trusted.timestamp.snapshot_meta.version)))
        result = Verified(trusted.root.version)
        result.roles.update(root=trusted.root.version, timestamp=trusted.timestamp.version,
                            snapshot=trusted.snapshot.version)
        step = "targets"
        _check_thresholds(trusted.root.roles.items())
        trusted.update_targets(read(metadata_filename("targets", _meta_version(trusted, "targets"))))
        result.roles["targets"] = trusted.targets.version
        todo = [("targets", trusted.targets)]
        while todo:
            parent, targets = todo.pop(0)
            if targets.delegations is None or targets.delegations.roles is None:
                continue
            _check_thresholds((n, r) for n, r in targets.delegations.roles.items())
            for name in targets.delegations.roles:
                if name in result.roles or (only is not None and not only(name)):
                    continue
                step = name
                loaded = trusted.update_delegated_targets(
                    read(metadata_filename(name, _meta_version(trusted, name))), name, parent)
                result.roles[name] = loaded.version
                todo.append((name, loaded))
    except RepositoryError:
        raise
    except tuf_errors.UnsignedMetadataError as e:
        if (step == "root" and given is not None and version == given + 1
                and not _signed_by(trusted.root, read(metadata_filename("root", version)))):
            raise RepositoryError(
                f"root v{version} is not signed by a threshold of the keys of the trusted root "
                f"you gave (v{given}): that root is not this repository's, or root v{version} "
                "still needs signatures of the previous root keys (`hsmsign sign REPO root` "
                "where they are)") from None
        raise RepositoryError(_explain(step, e)) from None
    except (tuf_errors.RepositoryError, ValueError) as e:
        raise RepositoryError(_explain(step, e)) from None
    return result


def _signed_by(root, data: bytes) -> bool:
    """Whether `data` (a root) carries a threshold of signatures of `root`'s root keys."""
    from tuf.api.serialization import DeserializationError

    try:
        md = Metadata.from_bytes(data)
        root.verify_delegate("root", md.signed_bytes, md.signatures)
    except (DeserializationError, tuf_errors.UnsignedMetadataError):
        return False
    return True


def _check_thresholds(roles) -> None:
    for name, spec in roles:
        problem = _fewer_keys_than_threshold(name, len(spec.keyids), spec.threshold)
        if problem:
            raise RepositoryError(problem)


def _meta_version(trusted: TrustedMetadataSet, role: str) -> int:
    meta = trusted.snapshot.meta.get(f"{role}.json")
    if meta is None:
        raise RepositoryError(f"snapshot does not list {role}; re-sign with `hsmsign repo refresh`")
    return meta.version


def _read_bytes(repo: HsmsignRepository, name: str) -> bytes:
    path = repo.metadata_dir / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RepositoryError(f"{path} is missing; restore it") from None


# -- thresholds -----------------------------------------------------------------------


@dataclass
class Threshold:
    """Who signed one role's metadata, by python-tuf's own verification (what a client runs)."""

    label: str  # the role, or "root (previous keys)"
    threshold: int
    signed: list[str]
    unsigned: list[str]

    @property
    def met(self) -> bool:
        return len(self.signed) >= self.threshold

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.signed))

    def to_json(self) -> dict:
        return {"keys": self.label, "threshold": self.threshold, "signed": self.signed,
                "unsigned": self.unsigned, "met": self.met}


def thresholds(repo: HsmsignRepository, role: str, md: Metadata,
               previous_root: Root | None = None, *, delegator=None,
               payload: bytes | None = None) -> list[Threshold]:
    """`role`'s thresholds for `md` by python-tuf's own verification: against `delegator`
    (default: the delegator as `repo` reads it now), and for a new root also against the root
    before it (`previous_root`). `payload`: `md.signed_bytes`, when already at hand. A
    delegator that does not delegate `role` meets no threshold."""
    payload = md.signed_bytes if payload is None else payload
    if role == "root":
        result = md.signed.get_root_verification_result(previous_root, payload, md.signatures)
        out = [_threshold("root", result.second)]
        if previous_root is not None:
            out.append(_threshold("root (previous keys)", result.first))
        return out
    delegator = repo.delegator(role) if delegator is None else delegator
    try:
        result = delegator.get_verification_result(role, payload, md.signatures)
    except ValueError:  # not delegated there (yet)
        return [Threshold(role, 1, [], [])]
    return [_threshold(role, result)]


def _threshold(label: str, result) -> Threshold:
    return Threshold(label, result.threshold, sorted(result.signed), sorted(result.unsigned))


# -- status ---------------------------------------------------------------------------


@dataclass
class RoleStatus:
    role: str
    version: int
    expires: datetime
    threshold: int
    keys: list[dict]  # {"keyid", "signed", "here"}
    delegated_by: str
    paths: list[str] | None = None
    targets: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def signatures(self) -> int:
        return sum(1 for k in self.keys if k["signed"])

    @property
    def threshold_met(self) -> bool:
        return self.signatures >= self.threshold

    def to_json(self) -> dict:
        return {"role": self.role, "version": self.version,
                "expires": self.expires.isoformat().replace("+00:00", "Z"),
                "expired": self.expires <= now(), "threshold": self.threshold,
                "signatures": self.signatures, "threshold_met": self.threshold_met,
                "keys": self.keys, "delegated_by": self.delegated_by, "paths": self.paths,
                "targets": self.targets, "problems": self.problems}


def status(repo: HsmsignRepository, held_keyids: set[str]) -> list[RoleStatus]:
    """Every role: version, expiry, threshold and, per key, whether it signed and is here."""
    repo.require()
    out = []
    roles = [*TOP_LEVEL_ROLES, *sorted(repo.parents())]
    for role in roles:
        md: Metadata = repo.open(role)
        keys, threshold = repo.role_keys(role, md if role == "root" else None)
        signed = set(valid_signers(md, keys))
        entry = RoleStatus(
            role=role, version=md.signed.version, expires=md.signed.expires,
            threshold=threshold,
            keys=[{"keyid": k, "signed": k in signed, "here": k in held_keyids} for k in sorted(keys)],
            delegated_by="root" if role in TOP_LEVEL_ROLES else repo.parents()[role],
        )
        if role not in TOP_LEVEL_ROLES:
            entry.paths = list(repo.delegated_role(role).paths or [])
        if role not in ("root", "snapshot", "timestamp"):
            entry.targets = len(md.signed.targets)
        problem = _fewer_keys_than_threshold(role, len(keys), threshold)
        if problem:
            entry.problems.append(problem)
        elif not entry.threshold_met:
            need = threshold - entry.signatures
            can = [k["keyid"][:7] for k in entry.keys if not k["signed"]]
            entry.problems.append(f"needs {need} more signature(s), from any of: {', '.join(can)}")
        if md.signed.expires <= now():
            entry.problems.append(f"expired on {md.signed.expires:%Y-%m-%d %H:%M} UTC")
        out.append(entry)
    return out
