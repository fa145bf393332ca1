"""All the stores of one home together: a registry of store kinds, listing, lookup by key ID,
and store preference.

Hardware comes first: `auto` puts root on a YubiKey when one is plugged in, else on a token when
one is present, and when the same key is in several stores, a YubiKey (its PIV route) signs
before a PKCS#11 token, and a token before a file. That order is `STORE_FOR_KIND`'s.

Adding a kind of store is one module (a `KeyStore` subclass, keystore/base.py) and one line in
`STORE_FOR_KIND`, at its place in the preference (and its `StoreKind` value); see
docs/architecture.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hsmsign.config import TokenConfig
from hsmsign.errors import HsmsignError, KeyNotFound, NotFound  # noqa: F401 - NotFound as before
from hsmsign.keys import KEYID_PREFIX_MIN, Algorithm, KeyRecord
from hsmsign.keystore.base import KeyStore, Listing, StoreContext, StoreKind
from hsmsign.keystore.file import FileKeyStore
from hsmsign.keystore.kms import KmsKeyStore, KmsOptions
from hsmsign.keystore.pkcs11 import Pkcs11KeyStore, TokenError
from hsmsign.keystore.yubikey import YubiKeyOptions, YubiKeyStore
from hsmsign.secrets import Secrets

logger = logging.getLogger(__name__)

# The registry, as securesystemslib's SIGNER_FOR_URI_SCHEME: kind -> store class. Its order is
# the store preference, written here only: which store signs when several hold a key, and
# which store `--store auto` offers a new root key to first.
STORE_FOR_KIND: dict[StoreKind, type[KeyStore]] = {
    StoreKind.YUBIKEY: YubiKeyStore,
    StoreKind.TOKEN: Pkcs11KeyStore,
    StoreKind.KMS: KmsKeyStore,
    StoreKind.FILE: FileKeyStore,
}

STORE_CHOICES = ("auto", *(kind.value for kind in StoreKind))

__all__ = ["STORE_CHOICES", "STORE_FOR_KIND", "KeyStores", "Listing"]


def _store_of_kind(kind: StoreKind) -> Any:
    """A read-only attribute of `KeyStores` that is its store of `kind`."""
    return property(lambda self: self.stores[kind], doc=f"The {kind} store.")


class KeyStores:
    def __init__(self, home: Path, secrets: Secrets, token_config: TokenConfig, *,
                 force: bool = False, kdf_iterations: int | None = None,
                 notify=None, yubikey_devices=None):
        self.home = home
        self.secrets = secrets
        self.token_config = token_config
        context = StoreContext(home, secrets, token_config, force=force,
                               kdf_iterations=kdf_iterations, notify=notify,
                               yubikey_devices=yubikey_devices)
        # In preference order; one store of every registered kind, opened lazily by each.
        self.stores: dict[StoreKind, KeyStore] = {
            kind: cls.for_home(context) for kind, cls in STORE_FOR_KIND.items()}

    def store(self, kind: StoreKind | str) -> KeyStore:
        """The store of `kind` (a StoreKind or its value)."""
        return self.stores[StoreKind(kind)]

    # The stores by their old names, for the code that needs what only one kind does.
    files: FileKeyStore = _store_of_kind(StoreKind.FILE)
    token: Pkcs11KeyStore = _store_of_kind(StoreKind.TOKEN)
    yubikey: YubiKeyStore = _store_of_kind(StoreKind.YUBIKEY)
    kms: KmsKeyStore = _store_of_kind(StoreKind.KMS)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    # -- which stores can be used ------------------------------------------------------

    def available(self, kind: StoreKind | str) -> bool:
        """The store of `kind` is used by this home and can be reached now."""
        store = self.store(kind)
        return store.enabled() and store.is_present()

    def token_available(self) -> bool:
        """A token is configured (or found in a well-known module) and present."""
        return self.available(StoreKind.TOKEN)

    def yubikey_available(self) -> bool:
        """A YubiKey is plugged in (and tokens are not switched off for this home)."""
        return self.available(StoreKind.YUBIKEY)

    def usable_stores(self) -> list[KeyStore]:
        """The stores that can be used now, in preference order (files always can)."""
        return [store for kind, store in self.stores.items() if self.available(kind)]

    def configured_token_problem(self) -> str | None:
        """Why the token the user configured (module, label or serial) cannot be used, or None.
        For when keys are missing: read silently as "no key here", an absent token lets a
        change be written without the signatures it was meant to give."""
        if (self.token_config.explicit and self.token_config.candidate_modules()
                and not self.token_available()):
            try:
                self.token.require_present()
            except TokenError as e:
                return str(e)
        return None

    def elsewhere(self, keyids) -> str:
        """Where keys that are not here are, when this home knows: " (key 9f186d8 is on YubiKey
        12345678: plug it in)", or ""."""
        here = self.all_keyids()
        for keyid in keyids:
            serial = None if keyid in here else self.yubikey.remembered_serial(keyid)
            if serial is not None:
                return f" (key {keyid[:7]} is on YubiKey {serial}: plug it in)"
        return ""

    # -- listing and lookup ------------------------------------------------------------

    def list_keys(self, *, files: bool = True) -> Listing:
        """Every key of every store (files first, as `key list` has always shown them), and
        warnings for stores that could not be read; without `files`, the other stores' only
        (a backup has just read the key files itself)."""
        listing = Listing(keys=[])
        for store in reversed(self.stores.values()):
            if store.kind is StoreKind.FILE and not files:
                continue
            part = store.listing()
            listing.keys.extend(part.keys)
            listing.warnings.extend(part.warnings)
        return listing

    def all_keyids(self) -> set[str]:
        ids: set[str] = set()
        # Files first, then each store as it is found usable: the order matters to a YubiKey
        # that ykcs11 (the token) and PIV both reach.
        for kind, store in reversed(self.stores.items()):
            if self.available(kind):
                ids.update(store.keyids())
        return ids

    def resolve(self, keyid_or_prefix: str) -> str:
        """A full key ID from a key ID or a unique prefix of at least 7 characters."""
        wanted = keyid_or_prefix.strip().lower()
        ids = self.all_keyids()
        if wanted in ids:
            return wanted
        if len(wanted) < KEYID_PREFIX_MIN:
            raise HsmsignError(
                f"key ID {keyid_or_prefix!r} is too short; give at least {KEYID_PREFIX_MIN} characters"
            )
        matches = sorted(k for k in ids if k.startswith(wanted))
        if not matches:
            raise KeyNotFound(f"no key matches {keyid_or_prefix!r}; see `hsmsign key list`")
        if len(matches) > 1:
            raise HsmsignError(
                f"key ID {keyid_or_prefix!r} is ambiguous: {', '.join(matches)}; give more characters"
            )
        return matches[0]

    def locate(self, keyid: str) -> list[KeyRecord]:
        """Every store holding `keyid`, in preference order (hardware first)."""
        found = []
        for store in self.usable_stores():
            if keyid in store.keyids():
                found.append(store.record(keyid))
        if not found:
            raise KeyNotFound(f"no key {keyid} in any store; see `hsmsign key list`")
        return found

    def store_of(self, record: KeyRecord) -> KeyStore:
        return self.store(record.store)

    def public_key(self, keyid: str):
        record = self.locate(keyid)[0]
        return self.store_of(record).public_key(keyid)

    def tuf_key_of(self, key_or_pem: str):
        """A TUF key from a key ID (or unique prefix) in some store, or from a PEM file (a
        public key or a certificate)."""
        import os

        from hsmsign.keys import load_public_key_file, tuf_key

        if os.path.isfile(key_or_pem):
            return tuf_key(load_public_key_file(key_or_pem))
        return tuf_key(self.public_key(self.resolve(key_or_pem)))

    # -- changes -----------------------------------------------------------------------

    def choose_store(self, role: str, store: str, *,
                     file_option: str = "--store file") -> tuple[StoreKind, str]:
        """The store a new key of `role` goes to, and why (for the user); `file_option` is
        how the command the user ran asks for a file key instead."""
        if store != "auto":
            if store not in STORE_CHOICES:
                raise HsmsignError(f"unknown store {store!r}; choose one of {', '.join(STORE_CHOICES)}")
            kind = StoreKind(store)
            return kind, self.store(kind).reason_asked()
        if role != "root":
            return StoreKind.FILE, f"{role} keys are online keys and live in files unless --store token"
        for kind, candidate in self.stores.items():  # in preference order
            why = candidate.reason_auto_root(file_option)
            if why is not None:
                logger.info("store auto: a new root key goes to the %s store (%s)", kind, why)
                return kind, why
        raise HsmsignError("no store takes a new root key")  # pragma: no cover - files always do

    def generate(self, role: str, gun: str | None, alg: Algorithm, store: str, *,
                 yubikey: YubiKeyOptions | None = None,
                 file_option: str = "--store file",
                 kms: KmsOptions | None = None) -> tuple[KeyRecord, str]:
        where, why = self.choose_store(role, store, file_option=file_option)
        if kms is not None and where is not StoreKind.KMS:
            raise HsmsignError("--kms applies to KMS keys: add --store kms")
        if yubikey is not None and where not in (StoreKind.YUBIKEY, StoreKind.KMS):
            raise HsmsignError(f"--slot, --touch and --pin-policy apply to YubiKey keys; this "
                               f"{role} key would go to the {where} store ({why})")
        options = kms if where is StoreKind.KMS else yubikey
        return self.store(where).generate(role, alg, options, gun=gun), why

    def add_private(self, key, role: str, gun: str | None, store: str, passphrase: str | None) -> KeyRecord:
        """Store an imported software key (`passphrase` protects it when it goes to a file)."""
        return self.store(store).import_key(key, role, gun=gun, passphrase=passphrase)

    def file_key_to_yubikey(self, keyid: str, role: str, store: str = "auto",
                            options: YubiKeyOptions | None = None) -> tuple[KeyRecord, str]:
        """The notary route (`key generate --import-from-file`): an existing file key of `role`
        goes into a YubiKey slot, and the encrypted file stays as its backup; the record, and
        why (for the user)."""
        if store not in ("auto", StoreKind.YUBIKEY):
            raise HsmsignError("--import-from-file puts a file key into a YubiKey: use --store yubikey")
        keyid = self.resolve(keyid)
        if keyid not in self.files.keyids():
            raise HsmsignError(f"key {keyid} is not a file key; --import-from-file takes the key ID "
                               "of an encrypted key file (`hsmsign key list`)")
        file_record = self.files.record(keyid)
        if file_record.role != role:
            raise HsmsignError(f"key {keyid[:7]} is a {file_record.role} key, not a {role} key")
        self.yubikey.require_present()
        private = self.files.private_key(keyid)
        record = self.yubikey.import_private(private, role, options or YubiKeyOptions())
        return record, (f"imported from {self.files.key_path(keyid)}, which stays as the "
                        "encrypted backup")

    def remove(self, keyid: str) -> list[KeyRecord]:
        removed = self.locate(keyid)
        for record in removed:
            self.store_of(record).remove(keyid)
        return removed
