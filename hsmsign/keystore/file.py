"""Passphrase-encrypted key files, notary-compatible.

Layout under the home:

    private/<keyid>.key   PEM "ENCRYPTED PRIVATE KEY" (PKCS#8, PBES2, PBKDF2-HMAC-SHA256,
                          600,000 iterations, AES-256-CBC) with `role:` and `gun:` headers
    public/<keyid>.pub    the public key (SubjectPublicKeyInfo PEM), so that listing and
                          exporting never need the passphrase

Directories are 0700, files 0600, every write atomic.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign import pkcs8
from hsmsign.errors import HsmsignError, KeyNotFound
from hsmsign.config import ensure_home
from hsmsign.fsutil import (atomic_write, ensure_private_dir, fsync_dir, read_no_follow,
                            read_small_file)
from hsmsign.keys import (
    ONLINE_ROLES,
    Algorithm,
    KeyRecord,
    algorithm_of,
    generate_private_key,
    is_top_level,
    key_id,
    notary_key_id,
    load_public_key_pem,
    public_key_pem,
)
from hsmsign.keystore.base import KeyStore, Listing, StoreContext, StoreKind
from hsmsign.secrets import Secrets

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from securesystemslib.signer import Key, Signer

logger = logging.getLogger(__name__)

KDF_ITERATIONS = 600_000
STORE = StoreKind.FILE


class KeyFileFault(enum.Enum):
    """Why a key's files cannot be carried as they are (e.g. into a backup)."""

    LINK = "the key file is a symbolic link"
    UNREADABLE = "the key file cannot be read"
    CORRUPT = "the key file is corrupt"
    CLEAR = "the key file is not encrypted"
    PUBLIC_UNREADABLE = "the public key file cannot be read"
    PUBLIC_CORRUPT = "the public key file is corrupt"


class KeyFileError(HsmsignError):
    """A key's files cannot be carried as they are: `fault` says why, `path` which file."""

    def __init__(self, path: Path, fault: KeyFileFault, detail: str = ""):
        super().__init__(f"{fault.value}: {path}" + (f" ({detail})" if detail else ""))
        self.path = path
        self.fault = fault
        self.detail = detail


@dataclass(frozen=True)
class KeyFiles:
    """A key's files as they are on disk (the private one still encrypted), and its record."""

    record: KeyRecord
    private: bytes
    public: bytes | None  # None: not written yet (it is, from the private key, on first use)


class FileKeyStore(KeyStore):
    """Keys in `<home>/private`, each decrypted at most once per process."""

    kind = STORE

    def __init__(self, home: Path, secrets: Secrets, *, kdf_iterations: int = KDF_ITERATIONS):
        self.home = home
        self.private_dir = home / "private"
        self.public_dir = home / "public"
        self.secrets = secrets
        self.kdf_iterations = kdf_iterations
        self._unlocked: dict[str, PrivateKeyTypes] = {}

    @classmethod
    def for_home(cls, context: StoreContext) -> FileKeyStore:
        if context.kdf_iterations is None:
            return cls(context.home, context.secrets)
        return cls(context.home, context.secrets, kdf_iterations=context.kdf_iterations)

    # -- the KeyStore interface: a home always has its files -----------------------------

    def enabled(self) -> bool:
        return True

    def is_present(self) -> bool:
        return True

    def require_present(self) -> None:
        return None

    def listing(self) -> Listing:
        return Listing(keys=self.list_keys())

    def generate(self, role: str, alg: Algorithm, options=None, *,
                 gun: str | None = None) -> KeyRecord:
        """A new software key, encrypted under the role's new passphrase (asked first)."""
        passphrase = self.secrets.new_passphrase(role)
        return self.add(generate_private_key(alg), role, gun, passphrase)

    def import_key(self, key: PrivateKeyTypes, role: str, options=None, *,
                   gun: str | None = None, passphrase: str | None = None) -> KeyRecord:
        if passphrase is None:
            passphrase = self.secrets.new_passphrase(role)
        return self.add(key, role, gun, passphrase)

    def signer(self, keyid: str, public_key: Key | None = None) -> Signer:
        from hsmsign.keystore.signers import FileSigner  # securesystemslib: only to sign

        return FileSigner(self, keyid, public_key)

    def close(self) -> None:
        return None  # decrypted keys stay for the process, as the passphrase does

    def reason_asked(self) -> str:
        return "asked for a file key"

    def reason_auto_root(self, file_option: str) -> str | None:
        return ("no hardware token is configured and present (set HSMSIGN_PKCS11_MODULE "
                "and HSMSIGN_TOKEN_LABEL, or plug in a YubiKey); the root key is in an "
                "encrypted file instead")

    # -- reading -----------------------------------------------------------------------

    def key_path(self, keyid: str) -> Path:
        return self.private_dir / f"{keyid}.key"

    def keyids(self) -> list[str]:
        if not self.private_dir.is_dir():
            return []
        return sorted(p.name[:-4] for p in os.scandir(self.private_dir)
                      if p.name.endswith(".key") and not p.name.startswith("."))

    def list_keys(self) -> list[KeyRecord]:
        return [self.record(k) for k in self.keyids()]

    def record(self, keyid: str) -> KeyRecord:
        path = self.key_path(keyid)
        try:
            block = pkcs8.read_private_key_pem(path.read_bytes())
        except FileNotFoundError:
            raise KeyNotFound(f"no key file for {keyid}") from None
        except pkcs8.KeyFormatError as e:
            raise HsmsignError(f"key file {path} is corrupt ({e}); restore it from a backup") from None
        headers = {k.lower(): v for k, v in block.headers.items()}
        try:
            alg = algorithm_of(self.public_key(keyid)).name
        except KeyNotFound:
            alg = "unknown"
        return KeyRecord(
            keyid=keyid,
            role=headers.get("role", "unknown"),
            gun=headers.get("gun") or None,
            algorithm=alg,
            store=STORE,
            location=str(path),
        )

    def each_key_files(self, keyids) -> Iterator[KeyFiles]:
        """The bytes of each key's files, each read once (a link refused), and its record from
        them, without the passphrase: what a backup carries. Never a key in the clear."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        # Plain strings for the paths, and the set-up done once: a backup reads 10,000 keys'
        # files, and pathlib costs more than the reading (bench/bench_backup.py).
        private_dir, public_dir = os.fspath(self.private_dir), os.fspath(self.public_dir)
        for keyid in keyids:
            path = f"{private_dir}/{keyid}.key"
            try:
                data = read_no_follow(path)
            except OSError as e:
                fault = KeyFileFault.LINK if e.errno == errno.ELOOP else KeyFileFault.UNREADABLE
                raise KeyFileError(Path(path), fault, e.strerror or "") from None
            try:
                block = pkcs8.read_private_key_pem(data)
            except pkcs8.KeyFormatError as e:
                raise KeyFileError(Path(path), KeyFileFault.CORRUPT, str(e)) from None
            if not block.encrypted:  # hsmsign never writes one: planted, or put there by hand
                raise KeyFileError(Path(path), KeyFileFault.CLEAR)
            public_path = f"{public_dir}/{keyid}.pub"
            try:
                public = read_small_file(public_path)
            except FileNotFoundError:
                public = None
            except OSError as e:
                raise KeyFileError(Path(public_path), KeyFileFault.PUBLIC_UNREADABLE,
                                   e.strerror or "") from None
            alg = "unknown"
            if public is not None:
                try:
                    alg = algorithm_of(load_pem_public_key(public)).name
                except (ValueError, UnsupportedAlgorithm, HsmsignError):
                    raise KeyFileError(Path(public_path), KeyFileFault.PUBLIC_CORRUPT) from None
            headers = {k.lower(): v for k, v in block.headers.items()}
            record = KeyRecord(keyid=keyid, role=headers.get("role", "unknown"),
                               gun=headers.get("gun") or None, algorithm=alg, store=STORE,
                               location=path)
            yield KeyFiles(record, data, public)

    def public_key(self, keyid: str):
        try:
            return load_public_key_pem((self.public_dir / f"{keyid}.pub").read_bytes())
        except FileNotFoundError:
            raise KeyNotFound(f"no public key file for {keyid}") from None

    def private_key(self, keyid: str) -> PrivateKeyTypes:
        """Decrypt a key with its role's passphrase (asked once per process)."""
        if keyid in self._unlocked:
            return self._unlocked[keyid]
        record = self.record(keyid)
        data = self.key_path(keyid).read_bytes()
        logger.debug("decrypting %s key %s from %s", record.role, keyid[:7], self.key_path(keyid))
        key = self.secrets.unlock(record.role, f"{record.role} key {keyid[:7]}",
                                  lambda passphrase: self._decrypt(data, passphrase, record))
        if key_id(key.public_key()) != keyid:
            raise HsmsignError(
                f"key file {self.key_path(keyid)} holds a different key than its name says; "
                "restore it from a backup"
            )
        if not (self.public_dir / f"{keyid}.pub").exists():
            self._write_public(keyid, key)
        self._unlocked[keyid] = key
        return key

    def _decrypt(self, data: bytes, passphrase: str, record: KeyRecord) -> PrivateKeyTypes | None:
        """The key, or None for a wrong passphrase."""
        try:
            return pkcs8.load_private_key(data, passphrase.encode())
        except pkcs8.WrongPassphrase:
            return None
        except pkcs8.KeyFormatError as e:
            raise HsmsignError(
                f"key file {self.key_path(record.keyid)} is corrupt ({e}); restore it from a backup"
            ) from None

    # -- writing -----------------------------------------------------------------------

    def add(self, key: PrivateKeyTypes, role: str, gun: str | None, passphrase: str) -> KeyRecord:
        """Store a private key encrypted with `passphrase`; an error if it is already here."""
        keyid = key_id(key.public_key())
        if self.key_path(keyid).exists():
            raise HsmsignError(f"key {keyid} is already in {self.private_dir}; nothing imported")
        self._write(keyid, key, role, gun, passphrase)
        self._unlocked[keyid] = key
        return self.record(keyid)

    def _write(self, keyid: str, key: PrivateKeyTypes, role: str, gun: str | None,
               passphrase: str) -> None:
        headers = {"role": role}
        if gun:
            headers["gun"] = gun
        pem = pkcs8.encrypt_private_key_pem(
            key, passphrase.encode(), headers, iterations=self.kdf_iterations
        )
        ensure_home(self.home)
        ensure_private_dir(self.private_dir)
        self._write_public(keyid, key)
        atomic_write(self.key_path(keyid), pem)

    def _write_public(self, keyid: str, key: PrivateKeyTypes) -> None:
        ensure_private_dir(self.public_dir)
        atomic_write(self.public_dir / f"{keyid}.pub", public_key_pem(key.public_key()))

    def change_passphrase(self, keyid: str, new_passphrase: str) -> KeyRecord:
        record = self.record(keyid)
        key = self.private_key(keyid)
        self._write(keyid, key, record.role, record.gun, new_passphrase)
        return self.record(keyid)

    def remove(self, keyid: str) -> None:
        path = self.key_path(keyid)
        if not path.exists():
            raise KeyNotFound(f"no key file for {keyid}")
        path.unlink()
        (self.public_dir / f"{keyid}.pub").unlink(missing_ok=True)
        fsync_dir(self.private_dir)
        self._unlocked.pop(keyid, None)

    def notary_export(self, keyid: str) -> bytes:
        """The key as notary / `docker trust key load` reads it, under the same passphrase."""
        record = self.record(keyid)
        if record.role in ONLINE_ROLES and not record.gun:
            raise HsmsignError(
                f"notary and docker load a {record.role} key only with its GUN, and this key has "
                "none; import it again with --gun (e.g. docker.io/org/app)"
            )
        key = self.private_key(keyid)
        passphrase = self.secrets.passphrase(record.role)
        # notary needs `path:` (its own key ID) on encrypted keys; delegation roles are
        # `targets/<name>` there, and only targets/snapshot/timestamp keys carry a GUN.
        headers = {"path": notary_key_id(key.public_key())}
        if is_top_level(record.role):
            headers["role"] = record.role
            if record.gun and record.role != "root":
                headers["gun"] = record.gun
        else:
            headers["role"] = f"targets/{record.role}"
        return pkcs8.encrypt_notary_pem(key, passphrase.encode(), headers)
