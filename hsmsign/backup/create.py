"""`backup create`: every file key of a home (and a record of its hardware keys) into one
age-encrypted tar, written to each destination, read back and decrypted before anything is
renamed into place."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsmsign.backup import tar
from hsmsign.backup.age import Encryption, decrypt, encrypt
from hsmsign.backup.forked import ChildFailed, Forked
from hsmsign.backup.format import SUFFIX, Progress, no_progress
from hsmsign.backup.keyfiles import read_key_files
from hsmsign.backup.manifest import Manifest, ManifestFile, ManifestKey, key_summary
from hsmsign.backup.reading import read_archive_file
from hsmsign.errors import HsmsignError
from hsmsign.fsutil import PRIVATE_FILE_MODE, durable_temp, fsync_dir
from hsmsign.keystore.base import StoreKind
from hsmsign.keystore.file import KeyFileError, KeyFileFault

if TYPE_CHECKING:
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets


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
            "keys": [key_summary(k) for k in self.manifest.keys],
            "warnings": self.warnings,
        }


def _hsmsign_version() -> str:
    from hsmsign import __version__

    return __version__


def _unusable(e: KeyFileError) -> HsmsignError:
    """What a key file that cannot be backed up as it is means for the backup."""
    messages = {
        KeyFileFault.LINK: f"key file {e.path} is a symbolic link; nothing was backed up; "
                           "hsmsign keeps key files themselves in private/",
        KeyFileFault.UNREADABLE: f"cannot read key file {e.path}: {e.detail}",
        KeyFileFault.CORRUPT: f"key file {e.path} is corrupt ({e.detail}); nothing was backed "
                              "up; restore or remove it first",
        KeyFileFault.CLEAR: f"key file {e.path} is not encrypted; nothing was backed up; import "
                            "it with `hsmsign key import` (which encrypts it), then remove this "
                            "file",
        KeyFileFault.PUBLIC_UNREADABLE: f"cannot read {e.path}: {e.detail}",
        KeyFileFault.PUBLIC_CORRUPT: f"public key file {e.path} is corrupt; nothing was backed "
                                     "up; remove it (hsmsign writes it again)",
    }
    return HsmsignError(messages[e.fault])


def collect(stores: KeyStores, *, now: datetime | None = None,
            progress: Progress = no_progress) -> tuple[Manifest, dict[str, bytes], list[str]]:
    """The manifest and the members (name -> bytes) of a backup of `stores`' home."""
    members: dict[str, bytes] = {}
    keys: list[ManifestKey] = []
    keyids = stores.files.keyids()
    try:
        # Each file is read once, for the manifest and the archive.
        for n, found in enumerate(read_key_files(stores.files, keyids), 1):
            record = found.record
            entry_files = [_member(f"private/{record.keyid}.key", found.private, members)]
            if found.public is not None:
                entry_files.append(_member(f"public/{record.keyid}.pub", found.public, members))
            keys.append(ManifestKey(keyid=record.keyid, role=record.role, gun=record.gun,
                                    algorithm=record.algorithm, store=StoreKind.FILE,
                                    exported=True, files=tuple(entry_files)))
            progress("Reading key files", n, len(keyids))
    except KeyFileError as e:
        raise _unusable(e) from None
    listing = stores.list_keys(files=False)  # the hardware keys, for the record
    for record in listing.keys:
        keys.append(ManifestKey(keyid=record.keyid, role=record.role, gun=record.gun,
                                algorithm=record.algorithm, store=record.store, exported=False,
                                location=record.location, slot=_slot_of(stores, record.store)))
    keys.sort(key=lambda k: (k.role, k.gun or "", k.keyid, k.store))
    created = (now or datetime.now(UTC)).astimezone(UTC)
    manifest = Manifest(created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        hsmsign_version=_hsmsign_version(), keys=tuple(keys))
    return manifest, members, list(listing.warnings)


def _member(name: str, data: bytes, members: dict[str, bytes]) -> ManifestFile:
    members[name] = data
    return ManifestFile(name, hashlib.sha256(data).hexdigest(), len(data))


def _slot_of(stores: KeyStores, store: str) -> str | None:
    """The PKCS#11 slot of a token key (the YubiKey PIV slot is in its location)."""
    if store != StoreKind.TOKEN:
        return None
    try:
        return str(stores.token.slot_id)
    except Exception:  # noqa: BLE001 - a record, not a requirement
        return None


def archive_name(manifest: Manifest, manifest_bytes: bytes | None = None) -> str:
    """`hsmsign-backup-<UTC date>-<short id>.tar.age`; the short ID is the manifest's hash."""
    data = manifest.to_bytes() if manifest_bytes is None else manifest_bytes
    short = hashlib.sha256(data).hexdigest()[:8]
    return f"hsmsign-backup-{manifest.created[:10]}-{short}{SUFFIX}"


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
                  progress: Progress = no_progress, now: datetime | None = None) -> CreateResult:
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
    plaintext = tar.build_tar(manifest, members, manifest_bytes)
    # With recipients, this machine holds no identity to read the copies back with: an
    # ephemeral one, kept in memory only for this command, is added as one more recipient.
    readback_identity = None
    extra = []
    if encryption.passphrase is None:
        import pyrage

        readback_identity = pyrage.x25519.Identity.generate()
        extra = [readback_identity.to_public()]
    ciphertext = encrypt(plaintext, encryption, extra)
    # While the copies are written and read back: the check that the archive decrypts, in a
    # child process on the second core (age holds the GIL), and its SHA-256 for the report.
    checking = Forked.start(_decrypts, ciphertext, plaintext, encryption, readback_identity)
    digest = _sha256_meanwhile(ciphertext)

    temps: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for target in targets:
            temps.append((_write_temp(target, ciphertext), target))
        for n, (tmp, target) in enumerate(temps, 1):
            progress("Reading back the copies", n - 1, len(temps))
            _read_back(tmp, target, ciphertext)
            progress("Reading back the copies", n, len(temps))
        if not _child_says_decrypts(checking):  # or there was no child: check here (and say why)
            _check_decrypts(ciphertext, plaintext, encryption, readback_identity)
        for tmp, target in temps:
            os.replace(tmp, target)
            placed.append(target)
            fsync_dir(target.parent)
    except BaseException:
        if checking:
            checking.stop()
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        for target in placed:  # only when a later rename failed: all or nothing
            target.unlink(missing_ok=True)
        raise
    copies = [ArchiveCopy(str(t), len(ciphertext), digest()) for t in targets]
    return CreateResult(manifest, copies, encryption.kind, list(encryption.recipient_names),
                        warnings)


def _sha256_meanwhile(data: bytes):
    """A function that returns the hex SHA-256 of `data`, computed in a thread from now on:
    hashlib and file I/O both release the GIL, so writing and reading back the copies hide
    it (~30 ms for the 26 MB archive of 10,000 keys)."""
    digest: list[str] = []
    thread = threading.Thread(target=lambda: digest.append(hashlib.sha256(data).hexdigest()),
                              name="hsmsign-archive-sha256", daemon=True)
    thread.start()

    def result() -> str:
        thread.join()
        return digest[0]
    return result


def _write_temp(target: Path, data: bytes) -> Path:
    """`data` in a new 0600 temp file beside `target`, fsynced and dropped from the page
    cache, so that reading it back reads the drive."""
    try:
        return durable_temp(target, PRIVATE_FILE_MODE, lambda out: out.write(data),
                            drop_cache=True)
    except OSError as e:
        raise _write_error(e, target.parent, len(data)) from None


def _write_error(e: OSError, directory: Path, size: int) -> HsmsignError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HsmsignError(f"no space left in {directory} for the {size}-byte archive; nothing "
                            "was written to any destination; free some space or use another drive")
    return HsmsignError(f"cannot write to {directory}: {e.strerror}; nothing was written to "
                        "any destination")


def _read_back(tmp: Path, target: Path, ciphertext: bytes) -> None:
    """Read one copy back from its drive (written with the page cache dropped): it must hold
    exactly the bytes that were encrypted."""
    if read_archive_file(tmp) != ciphertext:
        raise HsmsignError(f"the copy written to {target.parent} reads back differently from "
                           "what was written: the drive may be failing; nothing was written to "
                           "any destination")


def _decrypts(ciphertext: bytes, plaintext: bytes, encryption: Encryption, identity) -> bool:
    """In a child process: whether `_check_decrypts` passes."""
    try:
        _check_decrypts(ciphertext, plaintext, encryption, identity)
    except HsmsignError:
        return False
    return True


def _child_says_decrypts(checking: Forked | None) -> bool:
    if checking is None:
        return False
    try:
        return checking.result() is True
    except ChildFailed:
        return False


def _check_decrypts(ciphertext: bytes, plaintext: bytes, encryption: Encryption,
                    identity) -> None:
    """The archive opens (with the passphrase, or the read-back identity) to the very tar
    that was built: the manifest and every member whose size and SHA-256 it lists, as they
    were read from the home. Every copy holds these same bytes (`_read_back`), so one
    decryption proves them all; a second scrypt decryption would prove nothing more."""
    what = "the archive just written"
    if encryption.passphrase is not None:
        opened = decrypt(ciphertext, what=what, passphrase=encryption.passphrase)
    else:
        opened = decrypt(ciphertext, what=what, identities=[identity],
                         identity_names="the read-back identity")
    if opened != plaintext:  # pragma: no cover - age itself failing
        raise HsmsignError(f"{what} does not decrypt to what was encrypted; nothing was "
                           "written to any destination")


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
