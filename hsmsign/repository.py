"""A TUF repository on disk, edited through python-tuf's `tuf.repository.Repository`.

Layout (what a TUF client downloads; serve `metadata/` and `targets/` with any web server):

    REPO/metadata/1.root.json, 2.root.json, ...   every root version
    REPO/metadata/timestamp.json
    REPO/metadata/N.snapshot.json, N.targets.json, N.<delegated role>.json
    REPO/targets/<dir>/<sha256>.<name>            target files added by file (consistent snapshots)
    REPO/hsmsign.json                             expiry periods (not served)

hsmsign supplies storage (`open`/`close`), keys and signing; python-tuf's base class supplies
`edit_*()`, `do_snapshot()` and `do_timestamp()`. A command's changes are staged in memory
and written by `commit()` only when everything succeeded: each file atomically, versioned files
first and `timestamp.json` last, so a client never sees a half-written set. The whole command
holds a lock on the repository.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import Key
from tuf.api.serialization import DeserializationError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from hsmsign.errors import HsmsignError
from hsmsign.fsutil import atomic_copy, atomic_write, ensure_public_dir, fsync_dir
from hsmsign.keys import TOP_LEVEL_ROLES, normalize_role
from hsmsign.signing import SigningReport, SigningService, valid_signers

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CONFIG_FILE = "hsmsign.json"
LOCK_FILE = ".hsmsign.lock"
PUBLIC_FILE_MODE = 0o644

# Root changes rarely and its keys are offline: a year. Targets are signed by a person when
# releasing: a quarter. Snapshot and timestamp are signed by online keys, by a cron job:
# short periods bound how long a mirror can replay stale metadata (freeze attacks).
DEFAULT_EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
DELEGATION_EXPIRY_DAYS = 90
LOCK_TIMEOUT_SECONDS = float(os.environ.get("HSMSIGN_LOCK_TIMEOUT", "30"))

_SIGNED_TYPES = {"root": Root, "timestamp": Timestamp, "snapshot": Snapshot}


class RepositoryError(HsmsignError):
    """The repository is missing, damaged, or the change asked for is not allowed."""


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def signed_type(role: str):
    return _SIGNED_TYPES.get(role, Targets)


def metadata_filename(role: str, version: int) -> str:
    if role == "timestamp":
        return "timestamp.json"
    return f"{version}.{role}.json"


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


def check_init_arguments(root_keys: int, root_threshold: int, expires: dict[str, float]) -> None:
    """What `init` refuses, checked before any key is generated for it."""
    if not 1 <= root_threshold <= root_keys:
        raise RepositoryError(
            f"root threshold {root_threshold} is not between 1 and the {root_keys} root key(s) given"
        )
    for role, days in expires.items():
        if role not in TOP_LEVEL_ROLES and role != "delegation":
            raise RepositoryError(f"--expires: unknown role {role!r}; give one of root, targets, "
                                  "snapshot, timestamp or delegation (every delegated role)")
        if days <= 0:
            raise RepositoryError(f"--expires {role}: give a positive number of days")


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


class HsmsignRepository(Repository):
    """One repository directory; one instance per command."""

    def __init__(self, path: Path, signing: SigningService | None = None):
        self.path = Path(path)
        self.metadata_dir = self.path / METADATA_DIR
        self.targets_dir = self.path / TARGETS_DIR
        self.signing = signing
        self.reports: dict[str, SigningReport] = {}
        self._cache: dict[str, Metadata] = {}
        self._staged: dict[str, Metadata] = {}  # filename -> metadata to write
        self._bumped: set[str] = set()  # roles given a new version by this command
        self._uploads: list[TargetUpload] = []
        self._targets_infos: dict[str, MetaFile] = {}
        self._previous_root: Metadata | None = None
        self._parents: dict[str, str] | None = None
        self._config: dict | None = None
        self._config_changed = False

    # -- reading -----------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.metadata_dir / "1.root.json").exists()

    def require(self) -> None:
        if not self.exists():
            raise RepositoryError(
                f"{self.path} is not an hsmsign repository (no metadata/1.root.json); "
                "create one with `hsmsign repo init`"
            )

    @property
    def config(self) -> dict:
        if self._config is None:
            path = self.path / CONFIG_FILE
            try:
                self._config = json.loads(path.read_text()) if path.exists() else {}
            except (ValueError, OSError) as e:
                raise RepositoryError(f"{path} is not valid JSON ({e}); fix or remove it") from None
            self._config.setdefault("expires", {})
        return self._config

    def expiry_days(self, role: str) -> float:
        days = self.config["expires"]
        if role in days:
            return float(days[role])
        return float(DEFAULT_EXPIRY_DAYS.get(role, days.get("delegation", DELEGATION_EXPIRY_DAYS)))

    def set_expiry_days(self, role: str, days: float) -> None:
        if days <= 0:
            raise RepositoryError(f"expiry of {role} must be a positive number of days")
        self.config["expires"][role] = days
        self._config_changed = True

    def root_versions(self) -> list[int]:
        versions = []
        for name in os.listdir(self.metadata_dir) if self.metadata_dir.is_dir() else []:
            m = re.fullmatch(r"(\d+)\.root\.json", name)
            if m:
                versions.append(int(m.group(1)))
        return sorted(versions)

    def read_file(self, filename: str, role: str) -> Metadata:
        """Parse one metadata file; a clear error for anything that is not `role`'s metadata."""
        path = self.metadata_dir / filename
        try:
            md = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise RepositoryError(f"{path} is missing; restore it or re-create the repository") from None
        except DeserializationError as e:
            raise RepositoryError(f"{path} is not valid TUF metadata ({e.__cause__ or e})") from None
        expected = signed_type(role)
        if not isinstance(md.signed, expected):
            raise RepositoryError(
                f"{path} holds {md.signed.type} metadata where {expected.type} was expected"
            )
        return md

    def _load(self, role: str) -> Metadata | None:
        """The current metadata of `role` from disk, checked; None if the role has none yet."""
        if role == "root":
            versions = self.root_versions()
            if not versions:
                return None
            md = self.read_file(metadata_filename("root", versions[-1]), "root")
            expected_version = versions[-1]
        elif role == "timestamp":
            if not (self.metadata_dir / "timestamp.json").exists():
                return None
            md = self.read_file("timestamp.json", "timestamp")
            expected_version = md.signed.version
        elif role == "snapshot":
            timestamp = self.open("timestamp").signed
            if timestamp.version == 0:
                return None  # a new repository
            version = timestamp.snapshot_meta.version
            md = self.read_file(metadata_filename("snapshot", version), "snapshot")
            expected_version = version
        else:
            snapshot = self.open("snapshot").signed
            meta = snapshot.meta.get(f"{role}.json") if snapshot.version else None
            if meta is None:
                return None
            md = self.read_file(metadata_filename(role, meta.version), role)
            expected_version = meta.version
        if md.signed.version != expected_version:
            raise RepositoryError(
                f"{metadata_filename(role, expected_version)} says version {md.signed.version}; "
                "it was replaced by another version (rollback?): restore the right file"
            )
        self._check_signatures(role, md)
        return md

    def _check_signatures(self, role: str, md: Metadata) -> None:
        """Every signature by a key of the role must verify: a bad one means the file changed."""
        keys, _ = self.role_keys(role, md if role == "root" else None)
        data = md.signed_bytes
        good = set(valid_signers(md, keys, data))
        bad = [k for k in md.signatures if k in keys and k not in good]
        if bad:
            raise RepositoryError(
                f"{role} metadata v{md.signed.version} has a signature by {bad[0][:7]} that does "
                "not verify: the file was changed after it was signed; restore it"
            )

    def open(self, role: str) -> Metadata:
        if role not in self._cache:
            md = self._load(role)
            if md is None:
                md = Metadata(signed_type(role)(expires=now()))
                md.signed.version = 0  # close() makes it version 1
            self._cache[role] = md
        return self._cache[role]

    def close(self, role: str, md: Metadata) -> None:
        """Bump version and expiry, re-sign with the keys here, and stage the file.

        A role edited twice in one command (e.g. `signer add` touching two delegations) gets
        one new version, not two.
        """
        if role in self._bumped:
            self._staged.pop(metadata_filename(role, md.signed.version), None)
        else:
            if role == "root" and md.signed.version >= 1:
                # The root being replaced must also sign its successor (TUF root rotation).
                self._previous_root = self.read_file(
                    metadata_filename("root", md.signed.version), "root")
            md.signed.version += 1
            self._bumped.add(role)
        md.signed.expires = now() + timedelta(days=self.expiry_days(role))
        md.signatures.clear()
        self.sign(role, md)
        self._cache[role] = md
        self._stage(role, md)
        if role not in ("root", "timestamp", "snapshot"):
            self._targets_infos[f"{role}.json"] = MetaFile(md.signed.version)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        # Only roles changed by this command: do_snapshot() keeps the rest of snapshot.meta.
        return self._targets_infos

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(self.open("snapshot").signed.version)

    # -- keys and delegations ----------------------------------------------------------

    def parents(self) -> dict[str, str]:
        """Delegated role -> the role that delegates it, for every role reachable from targets."""
        if self._parents is None:
            # Filled in place: loading a child checks its signatures, which needs its parent.
            self._parents = parents = {}
            todo = ["targets"]
            try:
                while todo:
                    parent = todo.pop()
                    delegations = self.open(parent).signed.delegations
                    for name in (delegations.roles or {}) if delegations else {}:
                        if name not in parents and name not in TOP_LEVEL_ROLES:
                            parents[name] = parent
                            todo.append(name)
            except BaseException:
                self._parents = None
                raise
        return self._parents

    def role_exists(self, role: str) -> bool:
        return role in TOP_LEVEL_ROLES or role in self.parents()

    def require_role(self, role: str) -> None:
        if not self.role_exists(role):
            known = ", ".join(["root", "targets", "snapshot", "timestamp", *sorted(self.parents())])
            raise RepositoryError(f"unknown role {role!r}; this repository has: {known}")

    def delegator(self, role: str) -> Root | Targets:
        if role in TOP_LEVEL_ROLES:
            return self.open("root").signed
        self.require_role(role)
        return self.open(self.parents()[role]).signed

    def role_keys(self, role: str, root_md: Metadata | None = None) -> tuple[dict[str, Key], int]:
        """The public keys of `role` and its threshold, as its delegator says now."""
        delegator = root_md.signed if root_md is not None else self.delegator(role)
        spec = delegator.get_delegated_role(role)
        keys = {k: delegator.get_key(k) for k in spec.keyids}
        return keys, spec.threshold

    def delegated_role(self, role: str) -> DelegatedRole:
        parent = self.open(self.parents()[role]).signed
        return parent.delegations.roles[role]

    # -- signing -----------------------------------------------------------------------

    def _service(self) -> SigningService:
        if self.signing is None:
            raise RepositoryError("no signing service: this operation needs keys")  # pragma: no cover
        return self.signing

    def sign(self, role: str, md: Metadata) -> SigningReport:
        """Add this machine's signatures to `md` (and, for root, the previous root's keys')."""
        keys, threshold = self.role_keys(role, md if role == "root" else None)
        previous = self._previous_root if role == "root" else None
        if previous is not None and previous.signed.version == md.signed.version - 1:
            old_keys, old_threshold = self.role_keys("root", previous)
            report = self._service().sign(md, role, {**old_keys, **keys}, threshold, counted=keys)
            old = SigningReport("root (previous keys)", md.signed.version, old_threshold,
                                sorted(old_keys), valid=valid_signers(md, old_keys))
            old.signed_here = [k for k in report.signed_here if k in old_keys]
            self.reports["root (previous keys)"] = old
        else:
            report = self._service().sign(md, role, keys, threshold)
        self.reports[role] = report
        return report

    def sign_current(self, role: str) -> SigningReport:
        """`hsmsign sign`: add signatures to the current version without changing it."""
        self.require_role(role)
        md = self.open(role)
        if role == "root" and md.signed.version > 1:
            self._previous_root = self.read_file(
                metadata_filename("root", md.signed.version - 1), "root")
        report = self.sign(role, md)
        if report.signed_here:
            self._stage(role, md)
        return report

    # -- staging and writing -----------------------------------------------------------

    def _stage(self, role: str, md: Metadata) -> None:
        self._staged[metadata_filename(role, md.signed.version)] = md

    def commit(self) -> list[str]:
        """Write everything staged; versioned files first, then root, then timestamp.json."""
        def order(name: str) -> int:
            if name == "timestamp.json":
                return 3
            if name.endswith(".root.json"):
                return 2
            if name.endswith(".snapshot.json"):
                return 1
            return 0

        ensure_public_dir(self.metadata_dir)
        for upload in self._uploads:
            ensure_public_dir(upload.destination.parent)
            if os.path.lexists(upload.destination):
                # Its name holds its SHA-256: a regular file there is this file already.
                if upload.destination.is_symlink() or not upload.destination.is_file():
                    raise RepositoryError(f"{upload.destination} is there and is not a regular "
                                          "file; remove it, then add the target again")
                continue
            atomic_copy(upload.source, upload.destination, PUBLIC_FILE_MODE)
        if self._config_changed:
            atomic_write(self.path / CONFIG_FILE,
                         json.dumps(self.config, indent=2, sort_keys=True).encode() + b"\n",
                         mode=PUBLIC_FILE_MODE)
        serializer = JSONSerializer()
        written = []
        for name in sorted(self._staged, key=lambda n: (order(n), n)):
            atomic_write(self.metadata_dir / name, self._staged[name].to_bytes(serializer),
                         mode=PUBLIC_FILE_MODE)
            written.append(name)
        if written:
            fsync_dir(self.metadata_dir)
        self._staged.clear()
        self._uploads.clear()
        return written

    def publish(self) -> None:
        """After a change to targets metadata: new snapshot and timestamp as needed."""
        self.do_snapshot()
        self.do_timestamp()

    # -- operations --------------------------------------------------------------------

    def init(self, root_keys: list[Key], root_threshold: int, role_keys: dict[str, list[Key]],
             expires: dict[str, float]) -> None:
        if self.exists():
            raise RepositoryError(f"{self.path} already has metadata; nothing changed")
        check_init_arguments(len(root_keys), root_threshold, expires)
        for role, days in expires.items():
            self.set_expiry_days(role, days)
        self._config_changed = True
        with self.edit_root() as root:
            root.consistent_snapshot = True
            for key in root_keys:
                root.add_key(key, "root")
            root.roles["root"].threshold = root_threshold
            for role in ("targets", "snapshot", "timestamp"):
                for key in role_keys[role]:
                    root.add_key(key, role)
        with self.edit_targets():
            pass
        self.do_snapshot(force=True)
        self.do_timestamp(force=True)

    def add_targets(self, role: str, targets: Iterable[TargetFile],
                    uploads: Iterable[TargetUpload] = ()) -> TargetChanges:
        """Add or replace `targets` in `role`. When every one is already there as given (and
        its file, if any), nothing is staged: no new versions for a change that changes nothing."""
        self.require()
        self.require_role(role)
        if role in ("root", "snapshot", "timestamp"):
            raise RepositoryError(f"{role} holds no targets; use targets or a delegated role")
        spec = None if role == "targets" else self.delegated_role(role)
        targets, uploads = list(targets), list(uploads)
        current = self.open(role).signed.targets
        changes = TargetChanges()
        for target in targets:
            check_target_path(target.path)
            if spec is not None and not spec.is_delegated_path(target.path):
                raise RepositoryError(
                    f"{target.path} is outside the paths delegated to {role} "
                    f"({', '.join(spec.paths or [])})"
                )
            known = current.get(target.path)
            if known is None:
                changes.added += 1
            elif known != target:
                changes.replaced += 1
            else:
                changes.unchanged += 1
        if not (changes.added or changes.replaced) and all(u.destination.exists() for u in uploads):
            return changes
        with self.edit_targets(role) as md:
            for target in targets:
                md.targets[target.path] = target
        self._uploads.extend(uploads)
        self.publish()
        return changes

    def remove_targets(self, role: str, paths: list[str]) -> None:
        self.require()
        self.require_role(role)
        with self.edit_targets(role) as md:
            for path in paths:
                if path not in md.targets:
                    raise RepositoryError(f"{role} has no target {path!r}; see `hsmsign target list`")
                del md.targets[path]
        self.publish()

    def all_targets(self) -> list[tuple[str, TargetFile]]:
        """(role, target) for every target of every role reachable from targets."""
        out = []
        for role in ["targets", *sorted(self.parents())]:
            for target in self.open(role).signed.targets.values():
                out.append((role, target))
        return out

    def add_delegation(self, role: str, keys: list[Key], *, paths: list[str] | None,
                       threshold: int | None, terminating: bool, parent: str) -> bool:
        """Delegate `role` from `parent`, or add keys and paths to an existing delegation.

        Returns True when the role is new.
        """
        self.require()
        role = normalize_role(role)
        if role in TOP_LEVEL_ROLES:
            raise RepositoryError(f"{role} is a top-level role and cannot be delegated")
        self.require_role(parent)
        if parent in ("root", "snapshot", "timestamp"):
            raise RepositoryError(f"only targets roles delegate; {parent} cannot")
        if role == parent:
            raise RepositoryError(f"delegation cycle: {role} cannot delegate to itself")
        parents = self.parents()
        if role in parents and parents[role] != parent:
            raise RepositoryError(
                f"{role} is already delegated by {parents[role]}; a role has one delegator "
                "(delegating it again from elsewhere would create a cycle or a second path)"
            )
        ancestor = parent
        while ancestor in parents:
            ancestor = parents[ancestor]
            if ancestor == role:
                raise RepositoryError(f"delegation cycle: {parent} is delegated by {role}")
        if parent != "targets" and paths:
            parent_spec = self.delegated_role(parent)
            for pattern in paths:
                if not any(_pattern_within(pattern, p) for p in parent_spec.paths or []):
                    raise RepositoryError(
                        f"path pattern {pattern!r} is outside what {parent} may sign "
                        f"({', '.join(parent_spec.paths or [])})"
                    )
        is_new = role not in parents
        with self.edit_targets(parent) as delegator:
            if delegator.delegations is None:
                delegator.delegations = Delegations(keys={}, roles={})
            if is_new:
                delegator.delegations.roles[role] = DelegatedRole(
                    role, [], threshold or 1, terminating, paths or ["*"])
            spec = delegator.delegations.roles[role]
            for key in keys:
                delegator.add_key(key, role)
            if paths and not is_new:
                spec.paths = sorted(set(spec.paths or []) | set(paths))
            if threshold is not None:
                spec.threshold = threshold
            if terminating:
                spec.terminating = True
            if not 1 <= spec.threshold <= len(spec.keyids):
                raise RepositoryError(
                    f"threshold {spec.threshold} for {role} is not between 1 and its "
                    f"{len(spec.keyids)} key(s)"
                )
        self._parents = None
        if is_new:
            with self.edit_targets(role):
                pass
        self.publish()
        return is_new

    def remove_delegation(self, role: str, keyid: str | None = None) -> list[str]:
        """Remove `role` (or only one of its keys). Returns warnings for the user."""
        self.require()
        self.require_role(role)
        if role in TOP_LEVEL_ROLES:
            raise RepositoryError(f"{role} is a top-level role; use `hsmsign rotate` to change its keys")
        parent = self.parents()[role]
        warnings = []
        with self.edit_targets(parent) as delegator:
            if keyid is None:
                spec = delegator.delegations.roles[role]
                for k in list(spec.keyids):
                    delegator.revoke_key(k, role)
                del delegator.delegations.roles[role]
            else:
                spec = delegator.delegations.roles[role]
                if keyid not in spec.keyids:
                    raise RepositoryError(f"key {keyid[:7]} is not a key of {role}")
                delegator.revoke_key(keyid, role)
                if len(spec.keyids) < spec.threshold:
                    warnings.append(
                        f"role {role} has fewer keys than its threshold of {spec.threshold}; "
                        "it will not be usable until keys are added to it"
                    )
        self._parents = None
        self.publish()
        return warnings

    def rotate(self, role: str, add: list[Key], remove: list[str]) -> None:
        """Replace keys of `role`; the delegator is re-signed, then the role itself."""
        self.require()
        self.require_role(role)
        if role in TOP_LEVEL_ROLES:
            with self.edit_root() as root:
                _change_keys(root, role, add, remove)
        else:
            with self.edit_targets(self.parents()[role]) as parent:
                _change_keys(parent, role, add, remove)
        if role == "targets" or role not in TOP_LEVEL_ROLES:
            with self.edit(role):
                pass  # a new version, signed by the new keys
        self.do_snapshot(force=role == "snapshot")
        self.do_timestamp(force=role in ("snapshot", "timestamp"))

    def refresh(self, roles: list[str] | None, within_days: float | None) -> tuple[list[str], list[str]]:
        """Re-sign roles that expire within `within_days` (default: half their period).

        Roles whose keys are not here are left alone (bumping them would leave them unsigned)
        and reported. Returns (refreshed, skipped-with-reason).
        """
        self.require()
        candidates = roles or ["root", "targets", *sorted(self.parents()), "snapshot", "timestamp"]
        for role in candidates:
            self.require_role(role)
        refreshed, skipped = [], []
        service = self._service()

        def due(role: str) -> bool:
            window = within_days if within_days is not None else self.expiry_days(role) / 2
            return self.open(role).signed.expires <= now() + timedelta(days=window)

        def signable(role: str) -> bool:
            keys, threshold = self.role_keys(role)
            if len(service.available(keys)) >= threshold:
                return True
            problem = service.stores.configured_token_problem()
            skipped.append(f"{role}: expires {self.open(role).signed.expires:%Y-%m-%d %H:%M} UTC, "
                           f"but fewer than {threshold} of its keys are here"
                           f"{service.stores.elsewhere(keys)}"
                           f"{f' (the configured token is not present: {problem})' if problem else ''}")
            return False

        for role in candidates:
            if role in ("snapshot", "timestamp") or not due(role) or not signable(role):
                continue
            with self.edit(role):
                pass
            refreshed.append(role)
        snapshot_due = "snapshot" in candidates and due("snapshot")
        if (self._targets_infos or snapshot_due) and signable("snapshot"):
            if self.do_snapshot(force=snapshot_due)[0]:
                refreshed.append("snapshot")
        timestamp_due = "timestamp" in candidates and due("timestamp")
        if ("snapshot" in refreshed or timestamp_due) and signable("timestamp"):
            if self.do_timestamp(force=timestamp_due)[0]:
                refreshed.append("timestamp")
        return refreshed, skipped


def _change_keys(delegator: Root | Targets, role: str, add: list[Key], remove: list[str]) -> None:
    spec = delegator.get_delegated_role(role)
    for keyid in remove:
        if keyid not in spec.keyids:
            raise RepositoryError(f"key {keyid[:7]} is not a key of {role}; nothing changed")
    for key in add:
        if key.keyid in spec.keyids:
            raise RepositoryError(f"key {key.keyid[:7]} is already a key of {role}; nothing changed")
        delegator.add_key(key, role)
    for keyid in remove:
        delegator.revoke_key(keyid, role)
    if not 1 <= spec.threshold <= len(spec.keyids):
        raise RepositoryError(
            f"{role} would have {len(spec.keyids)} key(s) for a threshold of {spec.threshold}; "
            "add keys before removing others; nothing changed"
        )


def _pattern_within(child: str, parent: str) -> bool:
    """Whether every path `child` matches is also matched by `parent` (TUF fnmatch rules)."""
    from fnmatch import fnmatchcase

    child_parts, parent_parts = child.split("/"), parent.split("/")
    if len(child_parts) != len(parent_parts):
        return False
    return all(fnmatchcase(c, p) for c, p in zip(child_parts, parent_parts, strict=True))

