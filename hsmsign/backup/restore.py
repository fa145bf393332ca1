"""`backup restore`: what would be added, is already there, or conflicts; then a staged,
all-or-nothing write into the home. Also takes a plain tar or tar.gz of a notary / docker
trust dir (Docker's documented backup) and imports its keys."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign.backup.format import KEY_DIRS, MANIFEST_NAME, ArchiveError, Progress, no_progress
from hsmsign.backup.reading import Opened, open_archive
from hsmsign.config import ensure_home
from hsmsign.errors import HsmsignError
from hsmsign.fsutil import PRIVATE_FILE_MODE, ensure_private_dir, fsync_dir, sync_files

if TYPE_CHECKING:
    from hsmsign.secrets import Secrets


@dataclass(frozen=True)
class RestoreEntry:
    keyid: str
    role: str
    gun: str | None
    algorithm: str
    store: str
    action: str  # add, identical, conflict, replace, hardware, already present
    source: str | None = None  # the member it comes from (trust dir imports)
    location: str | None = None  # hardware keys

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "gun"}


@dataclass
class RestoreResult:
    archive: str
    home: str
    kind: str  # "hsmsign" (with a manifest) or "trust dir"
    entries: list[RestoreEntry]
    dry_run: bool
    written: list[str] = field(default_factory=list)  # files written under the home

    @property
    def conflicts(self) -> list[RestoreEntry]:
        return [e for e in self.entries if e.action == "conflict"]

    def to_json(self) -> dict:
        return {"archive": self.archive, "home": self.home, "kind": self.kind,
                "dry_run": self.dry_run, "written": self.written,
                "keys": [e.to_json() for e in self.entries]}


class RestoreConflict(HsmsignError):
    """Keys with the same ID but other bytes are in the home; the plan says which."""

    def __init__(self, message: str, result: RestoreResult):
        super().__init__(message)
        self.result = result


def restore_backup(path: Path, home: Path, secrets: Secrets, identity_files: list[Path] = (), *,
                   dry_run: bool = False, force: bool = False,
                   progress: Progress = no_progress) -> RestoreResult:
    """Restore an hsmsign backup, or import the keys of a trust dir tar(.gz), into `home`."""
    opened = open_archive(path, secrets, identity_files, allow_plain=True)
    if opened.manifest is not None:
        return _restore_manifest(opened, home, dry_run=dry_run, force=force, progress=progress)
    return _restore_tree(opened, home, secrets, dry_run=dry_run, progress=progress)


def _restore_manifest(opened: Opened, home: Path, *, dry_run: bool, force: bool,
                      progress: Progress) -> RestoreResult:
    manifest = opened.manifest
    assert manifest is not None
    files = opened.contents.files
    entries: list[RestoreEntry] = []
    writes: dict[str, bytes] = {}
    present = _names_in(home)
    for key in manifest.keys:
        if not key.exported:
            entries.append(RestoreEntry(key.keyid, key.role, key.gun, key.algorithm, key.store,
                                        "hardware", location=key.location))
            continue
        new, differ = [], []
        for f in key.files:
            if f.name not in present:
                new.append(f.name)
                continue
            target = home / f.name
            try:
                existing = target.read_bytes() if not target.is_symlink() else None
            except FileNotFoundError:
                new.append(f.name)
                continue
            except IsADirectoryError:
                existing = None
            if existing != files[f.name]:
                differ.append(f.name)
        if differ:
            action = "replace" if force else "conflict"
        else:
            action = "add" if new else "identical"
        if action in ("add", "replace"):
            for name in (*new, *differ):
                writes[name] = files[name]
        entries.append(RestoreEntry(key.keyid, key.role, key.gun, key.algorithm, key.store,
                                    action))
    result = RestoreResult(str(opened.path), str(home), "hsmsign", entries, dry_run)
    if result.conflicts:  # a dry run fails too: a script can tell before it restores
        ids = ", ".join(e.keyid[:12] for e in result.conflicts[:5])
        more = "" if len(result.conflicts) <= 5 else f" and {len(result.conflicts) - 5} more"
        outcome = ("a restore would write nothing" if dry_run else "nothing was restored")
        raise RestoreConflict(
            f"{len(result.conflicts)} key(s) in the backup conflict with keys in {home} (same "
            f"ID, different file): {ids}{more}; {outcome}; --force replaces them",
            result)
    if not dry_run and writes:
        _commit(home, writes, progress)
        result.written = sorted(writes)
    return result


def _restore_tree(opened: Opened, home: Path, secrets: Secrets, *, dry_run: bool,
                  progress: Progress) -> RestoreResult:
    """Import the key files of a notary / docker trust dir (every layout `key import` reads)."""
    from hsmsign import pkcs8
    from hsmsign.config import NO_TOKEN
    from hsmsign.keystore.importing import KEY_SUFFIXES, import_keys
    from hsmsign.keystore.stores import KeyStores

    sources = {n: d for n, d in opened.contents.files.items() if n.endswith(KEY_SUFFIXES)}
    if not sources:
        raise HsmsignError(f"{opened.path} holds no {MANIFEST_NAME} and no key files "
                           "(*.key, *.pem): nothing to restore")
    for name, data in sources.items():
        # The members are staged on disk for the import: never a private key in the clear.
        try:
            clear = not pkcs8.read_private_key_pem(data).encrypted
        except pkcs8.KeyFormatError:
            continue  # the import says what is wrong with it
        if clear:
            raise ArchiveError(f"member {name!r} is a private key in the clear: refused (a key "
                               "backup must be encrypted; `hsmsign key import` takes such a "
                               "file, and encrypts it)")
    work = Path(tempfile.mkdtemp(prefix="hsmsign-restore-"))  # 0700
    try:
        src = work / "src"
        for name, data in sources.items():
            target = src / name  # a safe relative name: read_tar refused '..' and '/'
            try:
                ensure_private_dir(target.parent)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            except OSError:
                raise ArchiveError(f"member {name!r} collides with another member's path: "
                                   "refused") from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        staged = KeyStores(work / "home", secrets, NO_TOKEN)
        # Every key is decrypted (with its role's passphrase) before anything is kept.
        results = import_keys(staged, src, store="file", shown_from=src,
                              outcome="nothing was restored")
        present = set(_home_keyids(home))
        entries: list[RestoreEntry] = []
        writes: dict[str, bytes] = {}
        for r in results:
            source = str(Path(r.path).relative_to(src))
            if r.keyid in present or r.action == "already present":
                action = "already present"
            else:
                action = "add"
                for name in (f"private/{r.keyid}.key", f"public/{r.keyid}.pub"):
                    staged_file = work / "home" / name
                    if staged_file.exists():
                        writes[name] = staged_file.read_bytes()
                present.add(r.keyid)
            entries.append(RestoreEntry(r.keyid, r.role, r.gun, r.algorithm, "file", action,
                                        source=source))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = RestoreResult(str(opened.path), str(home), "trust dir", entries, dry_run)
    if not dry_run and writes:
        _commit(home, writes, progress)
        result.written = sorted(writes)
    return result


def _home_keyids(home: Path) -> list[str]:
    private = home / "private"
    if not private.is_dir():
        return []
    return [p.name[:-4] for p in os.scandir(private) if p.name.endswith(".key")]


def _names_in(home: Path) -> set[str]:
    """"private/<name>" and "public/<name>" for what the home's key directories hold (one
    listing each, rather than a failed open per file of a restore into a new home)."""
    names: set[str] = set()
    for directory in KEY_DIRS:
        try:
            names.update(f"{directory}/{name}" for name in os.listdir(home / directory))
        except FileNotFoundError:
            pass
        except OSError as e:  # unreadable, or not a directory: never guess what is there
            raise HsmsignError(f"cannot read {home / directory}: {e.strerror}; nothing was "
                               "restored") from None
    return names


def _commit(home: Path, files: dict[str, bytes], progress: Progress) -> None:
    """Write `files` (names relative to the home) all or nothing: staged in the home, made
    durable, then renamed into place (public keys first). Files 0600, directories 0700.

    A key directory that is empty (a restore into a new home) is replaced by its staged copy
    in one rename, atomically, instead of one rename per file (10,000 keys: 20,000 renames)."""
    created: list[Path] = []
    staging: str | None = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        for directory in (home, *sorted({home / n.split("/", 1)[0] for n in files})):
            if not directory.exists():
                for missing in reversed([directory, *directory.parents]):
                    if not missing.exists():
                        created.append(missing)
            if directory == home:
                ensure_home(home)  # an existing home is tightened too, as keys get added
            else:
                ensure_private_dir(directory)  # made, or tightened, before anything is staged
        staging = tempfile.mkdtemp(prefix=".hsmsign-restore-", dir=home)
        groups: dict[str, list[tuple[str, str]]] = {}  # key dir -> (staged, target); strings
        for n, (name, data) in enumerate(sorted(files.items()), 1):
            directory, base = name.split("/", 1)
            staged_dir = os.path.join(staging, directory)
            if directory not in groups:
                os.mkdir(staged_dir, 0o700)
                os.chmod(staged_dir, 0o700)  # whatever the umask: it may become the key dir
                groups[directory] = []
            tmp = os.path.join(staged_dir, base)
            fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            groups[directory].append((tmp, os.path.join(home, name)))
            progress("Writing key files", n, len(files))
        sync_files(staging, [tmp for staged in groups.values() for tmp, _ in staged])
        for directory in sorted(groups, key=lambda d: (d != "public", d)):
            target_dir = os.path.join(home, directory)
            if not os.listdir(target_dir):
                try:
                    os.rename(os.path.join(staging, directory), target_dir)  # replaces it
                    continue
                except OSError as e:  # a file appeared in it meanwhile: one by one
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
            for tmp, target in groups[directory]:
                os.replace(tmp, target)
            fsync_dir(Path(target_dir))
    except BaseException as e:
        # Undo: the staging area and every directory this restore created.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging = None
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                pass
        if not isinstance(e, OSError):
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HsmsignError(f"no space left in {home}; nothing was restored; free some "
                               "space and try again") from None
        raise HsmsignError(f"cannot write to {home}: {e.strerror}; nothing was restored") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            fsync_dir(home)
