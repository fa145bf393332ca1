"""Storage, keys and signing beneath python-tuf's `Repository`: what `open`/`close` read and
write, who signs each role, and `commit()`, which writes a command's files all at once."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from securesystemslib.signer import Key
from tuf.api.serialization import DeserializationError
from tuf.api.metadata import DelegatedRole, Metadata, MetaFile, Root, Targets
from tuf.repository import Repository

from hsmsign.fsutil import atomic_copy, atomic_write, ensure_public_dir, fsync_dir
from hsmsign.keys import TOP_LEVEL_ROLES
from hsmsign.repository.layout import (
    CONFIG_FILE,
    DEFAULT_EXPIRY_DAYS,
    DELEGATION_EXPIRY_DAYS,
    METADATA_DIR,
    METADATA_SERIALIZER,
    PUBLIC_FILE_MODE,
    TARGETS_DIR,
    NotAKeyOfRole,
    RepositoryError,
    metadata_filename,
    now,
    signed_type,
)
from hsmsign.repository.staging import StagingArea
from hsmsign.repository.targets import TargetUpload
from hsmsign.repository.verification import check_references, check_signatures
from hsmsign.signing import SigningReport, SigningService, valid_signers


@dataclass
class Outcome:
    """Where a command's changes went: published into metadata/, or staged, and who must
    still sign what is staged (role -> its thresholds)."""

    written: list[str] = field(default_factory=list)
    staged: list[str] = field(default_factory=list)
    waiting: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class RepositoryStorage(Repository):
    """The files of one repository directory under python-tuf's `Repository`; one instance
    per command. `HsmsignRepository` adds the operations the commands run."""

    def __init__(self, path: Path, signing: SigningService | None = None, *,
                 staged_view: bool = True):
        self.path = Path(path)
        self.metadata_dir = self.path / METADATA_DIR
        self.targets_dir = self.path / TARGETS_DIR
        self.staging = StagingArea(self.path)
        # Whether a role with a staged version is read from staged/ (what edits and `sign`
        # build on) or, as a client reads, from metadata/ only.
        self.staged_view = staged_view
        self.signing = signing
        self.reports: dict[str, SigningReport] = {}
        self.outcome = Outcome()
        self._cache: dict[str, Metadata] = {}
        self._pending: dict[str, Metadata] = {}  # role -> metadata this command changed
        self._from_staged: set[str] = set()  # roles read from staged/
        self._dropped: set[str] = set()  # staged roles whose delegation this command removed
        self.payloads: dict[str, bytes | None] = {}  # role -> canonical bytes signed last
        self._staged_files: dict | None = None
        self._keys_checked: dict[str, set[str]] = {}  # role -> keys checked when it was read
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

    def _read_published_only(self) -> None:
        """From now on read metadata/ only, as a client does (before anything is read)."""
        if self._cache or self._pending:
            raise RuntimeError("the view is chosen before anything is read")  # pragma: no cover
        self.staged_view = False
        self._staged_files = None
        self._parents = None

    def staged_files(self) -> dict:
        if self._staged_files is None:
            self._staged_files = self.staging.files() if self.staged_view else {}
        return self._staged_files

    def _load(self, role: str) -> Metadata | None:
        """The current metadata of `role` from disk, checked; None if the role has none yet."""
        if role in self.staged_files():
            md = self.staging.read(role)
            self._from_staged.add(role)
            self._check_signatures(role, md)
            return md
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
        self.check_role_signatures(role, md, keys)
        self._keys_checked[role] = set(keys)

    def check_role_signatures(self, role: str, md: Metadata, keys: dict[str, Key]) -> None:
        """`verification.check_signatures` on `role`'s file, wherever it was read from."""
        if role in self._from_staged:
            path, remedy = (self.staged_files()[role].path,
                            f"discard it with `hsmsign stage discard REPO {role}`")
        else:
            path, remedy = self.metadata_dir / metadata_filename(role, md.signed.version), "restore it"
        check_signatures(path, role, md, keys, remedy)

    def keys_checked(self, role: str) -> set[str]:
        """The key IDs whose signatures on `role`'s metadata were checked when it was read."""
        return self._keys_checked.get(role, set())

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
        if role not in self._bumped:
            if role not in self._from_staged:  # a staged version is the next version already
                md.signed.version += 1
            self._bumped.add(role)
            if role == "root" and md.signed.version > 1:
                # The root being replaced must also sign its successor (TUF root rotation).
                self._previous_root = self.read_file(
                    metadata_filename("root", md.signed.version - 1), "root")
        md.signed.expires = now() + timedelta(days=self.expiry_days(role))
        md.signatures.clear()
        self.sign(role, md)
        self._cache[role] = md
        self._pend(role, md)
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
            known = ", ".join([*TOP_LEVEL_ROLES, *sorted(self.parents())])
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
        self.payloads[role] = report.payload
        return report

    def sign_current(self, role: str) -> SigningReport:
        """`hsmsign sign`: add signatures to the current version without changing it."""
        self.require_role(role)
        md = self.open(role)
        if role == "root" and md.signed.version > 1:
            self._previous_root = self.read_file(
                metadata_filename("root", md.signed.version - 1), "root")
        self._check_chosen_keys(role, md)
        report = self.sign(role, md)
        if report.signed_here:
            self._pend(role, md)
        return report

    def _check_chosen_keys(self, role: str, md: Metadata) -> None:
        """`sign --key K` where K cannot sign `role` is a mistake, not "nothing to do"."""
        service = self._service()
        if service.only is None:
            return
        keys, _ = self.role_keys(role, md if role == "root" else None)
        allowed = set(keys)
        if role == "root" and self._previous_root is not None:
            allowed |= set(self.role_keys("root", self._previous_root)[0])  # rotation
        foreign = sorted(service.only - allowed)
        if not foreign:
            return
        held = service.stores.all_keyids()
        here = [k[:7] for k in sorted(allowed) if k in held]
        named = ", ".join(k[:7] for k in foreign)
        raise NotAKeyOfRole(
            f"{f'key {named} is not a key' if len(foreign) == 1 else f'keys {named} are not keys'}"
            f" of {role}; {role}'s keys are "
            f"{', '.join(k[:7] for k in sorted(allowed)) or 'none'}, and this machine holds "
            f"{', '.join(here) if here else 'none of them'}; nothing changed"
        )

    # -- writing ---------------------------------------------------------------------

    def _pend(self, role: str, md: Metadata) -> None:
        self._pending[role] = md

    def commit(self) -> list[str]:
        """Write what this command changed: into metadata/ what verifies there as a client
        would, into staged/ what still needs signatures from elsewhere (see `publication`).
        Returns the metadata/ file names written; `outcome` says the rest."""
        from hsmsign.repository.publication import settle

        if self._pending:
            # Nothing is written that would vouch for (or sit beside) metadata changed by hand.
            check_references(self, set(self._pending))
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
        self._uploads.clear()
        if self._pending:
            settle(self)
        self._pending.clear()
        return self.outcome.written

    def write_published(self, files: dict[str, Metadata],
                        data: dict[str, bytes] | None = None) -> list[str]:
        """Write `files` (role -> metadata) into metadata/: versioned files first, then root,
        snapshot, and `timestamp.json` last; their staged versions, if any, are removed."""
        def order(role: str) -> int:
            return {"timestamp": 3, "root": 2, "snapshot": 1}.get(role, 0)

        serializer = METADATA_SERIALIZER
        written = []
        for role in sorted(files, key=lambda r: (order(r), r)):
            name = metadata_filename(role, files[role].signed.version)
            content = data[role] if data else files[role].to_bytes(serializer)
            atomic_write(self.metadata_dir / name, content, mode=PUBLIC_FILE_MODE)
            written.append(name)
        if written:
            fsync_dir(self.metadata_dir)
        if self.staged_view:  # else the staged change was not read: it keeps waiting
            self.staging.remove([r for r in files if r in self.staging.files()])
        return written

    def publish(self) -> None:
        """After a change to targets metadata: new snapshot and timestamp as needed."""
        self.do_snapshot()
        self.do_timestamp()
