"""Encrypted backups of the file keys, and safe restores (see docs/backup.md).

    create_backup   every file key of a home (and a record of its hardware keys) into one
                    age-encrypted tar, written to each destination, read back and decrypted
                    before anything is renamed into place
    verify_backup   decrypt, check every member against the manifest, optionally prove that
                    each key file opens with its role's passphrase
    restore_backup  what would be added / is already there / conflicts; then a staged,
                    all-or-nothing write into the home. Also takes a plain tar or tar.gz of a
                    notary / docker trust dir (Docker's documented backup) and imports it.

The container and the hostile-input checks are in `backup_archive`. Nothing here prints or
prompts: secrets come from `Secrets`, progress goes to a callback, results are returned.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsmsign import backup_archive as archive
from hsmsign.backup_archive import (
    ArchiveError,
    Encryption,
    Manifest,
    ManifestFile,
    ManifestKey,
)
from hsmsign.config import ensure_home
from hsmsign.errors import HsmsignError
from hsmsign.fsutil import PRIVATE_FILE_MODE, ensure_private_dir, fsync_dir

if TYPE_CHECKING:
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets

# progress(task, done, total): called as work advances; the CLI draws a bar from it.
Progress = Callable[[str, int, int], None]


def _no_progress(task: str, done: int, total: int) -> None:
    pass


# -- create --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveCopy:
    path: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass
class CreateResult:
    manifest: Manifest
    archives: list[ArchiveCopy]
    encryption: str  # "passphrase" or "recipients"
    recipients: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "archives": [a.to_json() for a in self.archives],
            "key_count": len(self.manifest.exported),
            "hardware_key_count": len(self.manifest.hardware),
            "created": self.manifest.created,
            "encryption": self.encryption,
            "recipients": self.recipients,
            "keys": [_key_json(k) for k in self.manifest.keys],
            "warnings": self.warnings,
        }


def _key_json(key: ManifestKey) -> dict:
    out = {"keyid": key.keyid, "role": key.role, "gun": key.gun, "algorithm": key.algorithm,
           "store": key.store, "exported": key.exported}
    if not key.exported:
        out["location"] = key.location
    return out


def _hsmsign_version() -> str:
    from hsmsign import __version__

    return __version__


def _read_no_link(path: Path) -> bytes:
    """A key file's bytes; a symbolic link (to who knows what) is refused (ELOOP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def collect(stores: KeyStores, *, now: datetime | None = None,
            progress: Progress = _no_progress) -> tuple[Manifest, dict[str, bytes], list[str]]:
    """The manifest and the members (name -> bytes) of a backup of `stores`' home."""
    from hsmsign import pkcs8
    from hsmsign.keys import algorithm_of, load_public_key_pem

    files = stores.files
    members: dict[str, bytes] = {}
    keys: list[ManifestKey] = []
    keyids = files.keyids()
    for n, keyid in enumerate(keyids, 1):
        # What FileKeyStore.record says, from the bytes read once for the archive.
        key_path = files.key_path(keyid)
        try:
            data = _read_no_link(key_path)
            block = pkcs8.read_private_key_pem(data)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise HsmsignError(f"key file {key_path} is a symbolic link; nothing was backed "
                                   "up; hsmsign keeps key files themselves in private/") from None
            raise HsmsignError(f"cannot read key file {key_path}: {e.strerror}") from None
        except pkcs8.KeyFormatError as e:
            raise HsmsignError(f"key file {key_path} is corrupt ({e}); nothing was backed up; "
                               "restore or remove it first") from None
        if not block.encrypted:  # hsmsign never writes one: planted, or put there by hand
            raise HsmsignError(f"key file {key_path} is not encrypted; nothing was backed up; "
                               "import it with `hsmsign key import` (which encrypts it), then "
                               "remove this file")
        headers = {k.lower(): v for k, v in block.headers.items()}
        entry_files = [_member(f"private/{keyid}.key", data, members)]
        algorithm = "unknown"
        public_path = files.public_dir / f"{keyid}.pub"
        try:
            public = public_path.read_bytes()
        except FileNotFoundError:
            public = None  # written again from the private key on first use
        except OSError as e:
            raise HsmsignError(f"cannot read {public_path}: {e.strerror}") from None
        if public is not None:
            entry_files.append(_member(f"public/{keyid}.pub", public, members))
            try:
                algorithm = algorithm_of(load_public_key_pem(public)).name
            except HsmsignError:
                raise HsmsignError(f"public key file {public_path} is corrupt; nothing was "
                                   "backed up; remove it (hsmsign writes it again)") from None
        keys.append(ManifestKey(keyid=keyid, role=headers.get("role", "unknown"),
                                gun=headers.get("gun") or None, algorithm=algorithm,
                                store="file", exported=True, files=tuple(entry_files)))
        progress("Reading key files", n, len(keyids))
    listing = _hardware_listing(stores)
    for record in listing.keys:
        if record.store == "file":
            continue
        keys.append(ManifestKey(keyid=record.keyid, role=record.role, gun=record.gun,
                                algorithm=record.algorithm, store=record.store, exported=False,
                                location=record.location, slot=_slot_of(stores, record.store)))
    keys.sort(key=lambda k: (k.role, k.gun or "", k.keyid, k.store))
    created = (now or datetime.now(UTC)).astimezone(UTC)
    manifest = Manifest(created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        hsmsign_version=_hsmsign_version(), keys=tuple(keys))
    return manifest, members, list(listing.warnings)


class _NoFiles:
    def list_keys(self) -> list:
        return []


def _hardware_listing(stores: KeyStores):
    """`KeyStores.list_keys()` without reading the key files again (every hardware store it
    knows, and its warnings): the file keys were just read for the archive."""
    import copy

    view = copy.copy(stores)
    view.files = _NoFiles()  # type: ignore[assignment]
    return view.list_keys()


def _member(name: str, data: bytes, members: dict[str, bytes]) -> ManifestFile:
    members[name] = data
    return ManifestFile(name, hashlib.sha256(data).hexdigest(), len(data))


def _slot_of(stores: KeyStores, store: str) -> str | None:
    """The PKCS#11 slot of a token key (the YubiKey PIV slot is in its location)."""
    if store != "token":
        return None
    try:
        return str(stores.token.slot_id)
    except Exception:  # noqa: BLE001 - a record, not a requirement
        return None


def archive_name(manifest: Manifest, manifest_bytes: bytes | None = None) -> str:
    """`hsmsign-backup-<UTC date>-<short id>.tar.age`; the short ID is the manifest's hash."""
    data = manifest.to_bytes() if manifest_bytes is None else manifest_bytes
    short = hashlib.sha256(data).hexdigest()[:8]
    return f"hsmsign-backup-{manifest.created[:10]}-{short}{archive.SUFFIX}"


def _inside(path: Path, home: Path) -> bool:
    real_home = os.path.realpath(home)
    real = os.path.realpath(path)
    return real == real_home or real.startswith(real_home.rstrip(os.sep) + os.sep)


def resolve_destinations(outputs: list[Path], home: Path, name: str, *,
                         force: bool = False) -> list[Path]:
    """The archive file for each `--output` (a directory, or a file name in one)."""
    if not outputs:
        raise HsmsignError("no destination; pass --output DIR (e.g. a mounted USB drive), "
                           "once for each copy")
    targets: list[Path] = []
    seen: set[str] = set()
    for out in outputs:
        out = Path(out).expanduser().absolute()
        if out.is_dir():
            target = out / name
        elif not os.path.lexists(out) and not out.name.endswith(".age"):
            # Most likely a drive that is not mounted: never a stray file on the wrong disk.
            raise HsmsignError(f"destination {out} is not a directory; mount the drive, or give "
                               "a file name ending in .age (such as backup.tar.age)")
        elif out.parent.is_dir():
            target = out
        else:
            raise HsmsignError(f"destination {out} does not exist; mount the drive or create "
                               "the directory")
        if target.is_dir():
            raise HsmsignError(f"destination {target} is a directory")
        if _inside(target.parent, home):
            raise HsmsignError(f"destination {target} is inside the home {home}; a backup "
                               "belongs on another drive")
        real = os.path.join(os.path.realpath(target.parent), target.name)
        if real in seen:
            raise HsmsignError(f"destination {target} is given twice; give each drive once")
        seen.add(real)
        if os.path.lexists(target):
            if target.is_symlink() or not target.is_file():
                raise HsmsignError(f"{target} exists and is not a regular file; refusing to "
                                   "replace it")
            if not force:
                raise HsmsignError(f"{target} already exists; choose another name, or --force "
                                   "to replace it")
        targets.append(target)
    return targets


def same_disk_warnings(directories: list[Path], home: Path, what: str = "the home") -> list[str]:
    """A copy on the file system of what it backs up (`what`, at `home`) is no backup of it;
    for a drive's mount point (/media/usb1), it usually means the drive is not mounted."""
    try:
        home_device = os.stat(home).st_dev
    except OSError:
        return []
    return [f"{d} is on the same file system as {what} {home}; if it should be a USB drive, "
            "the drive is not mounted" for d in directories if os.stat(d).st_dev == home_device]


def create_backup(stores: KeyStores, outputs: list[Path], *,
                  recipients: list[tuple[str, Any]] = (), force: bool = False,
                  progress: Progress = _no_progress, now: datetime | None = None) -> CreateResult:
    """Back up every file key of `stores.home` to each of `outputs`.

    Encrypted to `recipients` ((text, pyrage recipient) pairs), else to the backup
    passphrase. Each copy is written to a temporary name, fsynced and read back from the
    drive; it must hold the very bytes that were encrypted, and they must decrypt to the tar
    that was built (the manifest, and every member it lists with its size and SHA-256). Only
    when every copy checks out are they renamed into place. On any failure no destination
    keeps anything.
    """
    home = stores.home
    manifest, members, warnings = collect(stores, now=now, progress=progress)
    if not manifest.exported:
        where = " (its keys are on hardware and cannot leave it)" if manifest.hardware else ""
        raise HsmsignError(f"no file keys in {home} to back up{where}")
    manifest_bytes = manifest.to_bytes()
    targets = resolve_destinations(outputs, home, archive_name(manifest, manifest_bytes),
                                   force=force)
    warnings.extend(same_disk_warnings([t.parent for t in targets], home))
    if recipients:
        encryption = Encryption(recipients=[r for _, r in recipients],
                                recipient_names=[t for t, _ in recipients])
    else:
        encryption = Encryption(passphrase=stores.secrets.backup_passphrase(new=True))
    plaintext = archive.build_tar(manifest, members, manifest_bytes)
    # With recipients, this machine holds no identity to read the copies back with: an
    # ephemeral one, kept in memory only for this command, is added as one more recipient.
    readback_identity = None
    extra = []
    if encryption.passphrase is None:
        import pyrage

        readback_identity = pyrage.x25519.Identity.generate()
        extra = [readback_identity.to_public()]
    ciphertext = archive.encrypt(plaintext, encryption, extra)
    digest = hashlib.sha256(ciphertext).hexdigest()

    temps: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for target in targets:
            temps.append((_write_temp(target, ciphertext), target))
        for n, (tmp, target) in enumerate(temps, 1):
            progress("Reading back the copies", n - 1, len(temps))
            _read_back(tmp, target, ciphertext)
            progress("Reading back the copies", n, len(temps))
        _check_decrypts(ciphertext, plaintext, encryption, readback_identity)
        for tmp, target in temps:
            os.replace(tmp, target)
            placed.append(target)
            fsync_dir(target.parent)
    except BaseException:
        for tmp, _ in temps:
            _unlink(tmp)
        for target in placed:  # only when a later rename failed: all or nothing
            _unlink(target)
        raise
    copies = [ArchiveCopy(str(t), len(ciphertext), digest) for t in targets]
    return CreateResult(manifest, copies, encryption.kind, list(encryption.recipient_names),
                        warnings)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_temp(target: Path, data: bytes) -> Path:
    """`data` in a new 0600 temp file beside `target`, fsynced and dropped from the page
    cache, so that reading it back reads the drive."""
    directory = target.parent
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise _write_error(e, directory, len(data)) from None
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        os.close(fd)
        _unlink(Path(name))
        raise _write_error(e, directory, len(data)) from None
    except BaseException:
        os.close(fd)
        _unlink(Path(name))
        raise
    os.close(fd)
    return Path(name)


def _write_error(e: OSError, directory: Path, size: int) -> HsmsignError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HsmsignError(f"no space left in {directory} for the {size}-byte archive; nothing "
                            "was written to any destination; free some space or use another drive")
    return HsmsignError(f"cannot write to {directory}: {e.strerror}; nothing was written to "
                        "any destination")


def _read_back(tmp: Path, target: Path, ciphertext: bytes) -> None:
    """Read one copy back from its drive (written with the page cache dropped): it must hold
    exactly the bytes that were encrypted."""
    if archive.read_archive_file(tmp) != ciphertext:
        raise HsmsignError(f"the copy written to {target.parent} reads back differently from "
                           "what was written: the drive may be failing; nothing was written to "
                           "any destination")


def _check_decrypts(ciphertext: bytes, plaintext: bytes, encryption: Encryption,
                    identity) -> None:
    """The archive opens (with the passphrase, or the read-back identity) to the very tar
    that was built: the manifest and every member whose size and SHA-256 it lists, as they
    were read from the home. Every copy holds these same bytes (`_read_back`), so one
    decryption proves them all; a second scrypt decryption would prove nothing more."""
    what = "the archive just written"
    if encryption.passphrase is not None:
        opened = archive.decrypt(ciphertext, what=what, passphrase=encryption.passphrase)
    else:
        opened = archive.decrypt(ciphertext, what=what, identities=[identity],
                                 identity_names="the read-back identity")
    if opened != plaintext:  # pragma: no cover - age itself failing
        raise HsmsignError(f"{what} does not decrypt to what was encrypted; nothing was "
                           "written to any destination")


# -- opening an archive --------------------------------------------------------------------


@dataclass
class Opened:
    """A decrypted archive, its members read and checked."""

    path: Path
    container: str  # "age", "gzip", "tar"
    encryption: str | None  # "passphrase", "recipients", or None for a plain tar
    contents: archive.TarContents
    manifest: Manifest | None  # None: a key tree without a manifest (a trust dir)


def _decrypt_archive(path: Path, data: bytes, secrets: Secrets,
                     identity_files: list[Path]) -> tuple[bytes, str]:
    what = str(path)
    stanzas = archive.age_stanzas(data)
    if "scrypt" in stanzas:
        plaintext = secrets.unlock_backup(
            f"backup {path.name}",
            lambda passphrase: archive.decrypt(data, what=what, passphrase=passphrase))
        return plaintext, "passphrase"
    if not set(stanzas) & {"X25519", "ssh-ed25519", "ssh-rsa"}:
        raise HsmsignError(f"{path}: its age header names neither a passphrase nor a recipient "
                           f"hsmsign knows ({', '.join(stanzas) or 'none'}); it is damaged, or "
                           "made for an age plugin: use another copy, or the plugin with `age -d`")
    if not identity_files:
        raise HsmsignError(f"{path} is encrypted to age recipients; pass --identity FILE "
                           "(the age identity file of one of them)")
    identities = [i for f in identity_files for i in archive.read_identity_file(Path(f))]
    names = ", ".join(str(f) for f in identity_files)
    plaintext = archive.decrypt(data, what=what, identities=identities, identity_names=names)
    assert plaintext is not None
    return plaintext, "recipients"


def _keep(name: str) -> bool:
    return name.endswith((".key", ".pem", ".pub"))


def open_archive(path: Path, secrets: Secrets, identity_files: list[Path] = (), *,
                 allow_plain: bool = False) -> Opened:
    path = Path(path)
    data = archive.read_archive_file(path)
    container = archive.container_kind(data)
    if container == "age":
        plaintext, encryption = _decrypt_archive(path, data, secrets, list(identity_files))
    elif container in ("gzip", "tar") and allow_plain:
        plaintext, encryption = data, None
    elif container in ("gzip", "tar"):
        raise HsmsignError(f"{path} is a plain {'tar.gz' if container == 'gzip' else 'tar'}, "
                           "not an hsmsign backup; `hsmsign backup restore` imports the keys "
                           "of a notary / docker trust dir from it")
    else:
        raise HsmsignError(f"{path} is not an hsmsign backup (.tar.age), a tar or a tar.gz")
    what = str(path)
    contents = archive.read_tar(archive.open_plaintext(plaintext, what=what), what=what,
                                keep=_keep)
    manifest = None
    if contents.manifest is not None or not allow_plain:
        manifest = archive.check_contents(contents, what=what)
    return Opened(path, container, encryption, contents, manifest)


# -- verify --------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    path: str
    manifest: Manifest
    encryption: str
    members: int
    passphrases_checked: bool = False

    def to_json(self) -> dict:
        return {
            "archive": self.path,
            "created": self.manifest.created,
            "hsmsign_version": self.manifest.hsmsign_version,
            "format_version": self.manifest.version,
            "encryption": self.encryption,
            "members": self.members,
            "key_count": len(self.manifest.exported),
            "hardware_key_count": len(self.manifest.hardware),
            "passphrases_checked": self.passphrases_checked,
            "keys": [_key_json(k) for k in self.manifest.keys],
        }


def verify_backup(path: Path, secrets: Secrets, identity_files: list[Path] = (), *,
                  check_passphrases: bool = False,
                  progress: Progress = _no_progress) -> VerifyResult:
    opened = open_archive(path, secrets, identity_files)
    manifest = opened.manifest
    assert manifest is not None and opened.encryption is not None
    if check_passphrases:
        keys = manifest.exported
        for n, key in enumerate(keys, 1):
            _check_passphrase(key, opened.contents.files[key.key_file.name], secrets)
            progress("Checking passphrases", n, len(keys))
    return VerifyResult(str(path), manifest, opened.encryption, len(opened.contents.files),
                        check_passphrases)


def _check_passphrase(key: ManifestKey, data: bytes, secrets: Secrets) -> None:
    from hsmsign import pkcs8
    from hsmsign.keys import key_id

    role = key.role if key.role != "unknown" else "delegation"
    purpose = f"{key.role} key {key.keyid[:7]} in the backup"

    def attempt(passphrase: str):
        try:
            return pkcs8.load_private_key(data, passphrase.encode())
        except pkcs8.WrongPassphrase:
            return None
        except pkcs8.KeyFormatError as e:
            raise ArchiveError(f"{key.key_file.name} in the backup is corrupt ({e})") from None

    private = secrets.unlock(role, purpose, attempt)
    if key_id(private.public_key()) != key.keyid:
        raise ArchiveError(f"{key.key_file.name} in the backup holds a different key than its "
                           "name says")


# -- restore -------------------------------------------------------------------------------


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
                   progress: Progress = _no_progress) -> RestoreResult:
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
        raise HsmsignError(f"{opened.path} holds no {archive.MANIFEST_NAME} and no key files "
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
    for directory in archive.KEY_DIRS:
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
    durable, then renamed into place (public keys first). Files 0600, directories 0700."""
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
        staged: list[tuple[str, str]] = []  # plain strings: thousands of files
        for n, (name, data) in enumerate(sorted(files.items()), 1):
            tmp = os.path.join(staging, name.replace("/", "_"))
            fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            staged.append((tmp, os.path.join(home, name)))
            progress("Writing key files", n, len(files))
        _sync(staging, [tmp for tmp, _ in staged])
        directories = {os.path.dirname(target) for _, target in staged}
        staged.sort(key=lambda pair: (os.path.basename(os.path.dirname(pair[1])) != "public",
                                      pair[1]))
        for tmp, target in staged:
            os.replace(tmp, target)
        for directory in directories:
            fsync_dir(Path(directory))
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


def _sync(directory: str, paths: list[str]) -> None:
    """Make the staged files durable: one syncfs(2) of their file system where Linux has it
    (much faster than an fsync per file for a thousand keys), else an fsync each."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- for the ceremony ----------------------------------------------------------------------


def backup_file_keys(home: Path, destinations: list[Path], secrets: Secrets) -> list[dict]:
    """Back up the file keys of a (staged) home with the backup passphrase: what the root
    ceremony records, one dict per copy (path, size, sha256)."""
    from hsmsign.config import NO_TOKEN
    from hsmsign.keystore.stores import KeyStores

    stores = KeyStores(home, secrets, NO_TOKEN)
    try:
        result = create_backup(stores, list(destinations))
    finally:
        stores.close()
    return [a.to_json() for a in result.archives]
