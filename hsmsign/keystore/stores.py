"""All the stores of one home together: listing, lookup by key ID, and store preference.

Hardware comes first: `auto` puts root on a YubiKey when one is plugged in, else on a token when
one is present, and when the same key is in several stores, a YubiKey (its PIV route) signs
before a PKCS#11 token, and a token before a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hsmsign.config import TokenConfig
from hsmsign.errors import HsmsignError, NotFound
from hsmsign.keys import KEYID_PREFIX_MIN, Algorithm, KeyRecord, generate_private_key
from hsmsign.keystore.file import FileKeyStore
from hsmsign.keystore.kms import KmsKeyStore, KmsOptions
from hsmsign.keystore.pkcs11 import Pkcs11KeyStore, TokenError
from hsmsign.keystore.yubikey import YubiKeyError, YubiKeyOptions, YubiKeyStore
from hsmsign.secrets import Secrets

STORE_CHOICES = ("auto", "file", "token", "yubikey", "kms")


@dataclass
class Listing:
    keys: list[KeyRecord]
    warnings: list[str] = field(default_factory=list)


class KeyStores:
    def __init__(self, home: Path, secrets: Secrets, token_config: TokenConfig, *,
                 force: bool = False, kdf_iterations: int | None = None,
                 notify=None, yubikey_devices=None):
        self.home = home
        self.secrets = secrets
        self.files = (FileKeyStore(home, secrets) if kdf_iterations is None
                      else FileKeyStore(home, secrets, kdf_iterations=kdf_iterations))
        self.token_config = token_config
        self.token = Pkcs11KeyStore(token_config, secrets, force=force, home=home)
        # YubiKeys through PIV; `notify` carries the touch prompt and warnings to the CLI.
        if notify is None and secrets.prompter is not None:
            notify = secrets.prompter.tell
        self.yubikey = YubiKeyStore(secrets, home=home, force=force, devices=yubikey_devices,
                                    notify=notify)
        self.kms = KmsKeyStore(home)  # cloud KMS keys, by their records (no service contacted)

    def close(self) -> None:
        self.token.close()
        self.kms.close()

    # -- which stores can be used ------------------------------------------------------

    def token_available(self) -> bool:
        """A token is configured (or found in a well-known module) and present."""
        if not self.token_config.candidate_modules():
            return False
        return self.token.is_present()

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

    def yubikey_available(self) -> bool:
        """A YubiKey is plugged in (and tokens are not switched off for this home)."""
        return (self.token_config.enabled and self.token_config.yubikeys
                and self.yubikey.is_present())

    def hardware_stores(self) -> list:
        yubikeys = [self.yubikey] if self.yubikey_available() else []
        return [*yubikeys, *([self.token] if self.token_available() else [])]

    # -- listing and lookup ------------------------------------------------------------

    def list_keys(self, *, files: bool = True) -> Listing:
        """Every key of every store, and warnings for stores that could not be read; without
        `files`, the other stores' only (a backup has just read the key files itself)."""
        listing = Listing(keys=[*(self.files.list_keys() if files else []),
                                *self.kms.list_keys()])
        try:
            if self.token_config.explicit or self.token_config.candidate_modules():
                if self.token.is_present():
                    listing.keys.extend(self.token.list_keys())
                elif self.token_config.explicit:
                    self.token.require_present()  # raises the precise reason
        except TokenError as e:
            listing.warnings.append(f"token keys not listed: {e}")
        try:
            if self.yubikey_available():
                listing.keys.extend(self.yubikey.list_keys())
                listing.warnings.extend(self.yubikey.warnings)
        except YubiKeyError as e:
            listing.warnings.append(f"YubiKey keys not listed: {e}")
        return listing

    def all_keyids(self) -> set[str]:
        ids = set(self.files.keyids()) | set(self.kms.keyids())
        if self.token_available():
            ids.update(self.token.keyids())
        if self.yubikey_available():
            ids.update(self.yubikey.keyids())
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
            raise NotFound(f"no key matches {keyid_or_prefix!r}; see `hsmsign key list`")
        if len(matches) > 1:
            raise HsmsignError(
                f"key ID {keyid_or_prefix!r} is ambiguous: {', '.join(matches)}; give more characters"
            )
        return matches[0]

    def locate(self, keyid: str) -> list[KeyRecord]:
        """Every store holding `keyid`, hardware first."""
        found = []
        for store in (*self.hardware_stores(), self.kms, self.files):
            if keyid in store.keyids():
                found.append(store.record(keyid))
        if not found:
            raise NotFound(f"no key {keyid} in any store; see `hsmsign key list`")
        return found

    def store_of(self, record: KeyRecord):
        if record.store == "yubikey":
            return self.yubikey
        if record.store == "kms":
            return self.kms
        return self.token if record.store == "token" else self.files

    def public_key(self, keyid: str):
        record = self.locate(keyid)[0]
        return self.store_of(record).public_key(keyid)

    # -- changes -----------------------------------------------------------------------

    def choose_store(self, role: str, store: str, *,
                     file_option: str = "--store file") -> tuple[str, str]:
        """The store a new key of `role` goes to, and why (for the user); `file_option` is
        how the command the user ran asks for a file key instead."""
        if store == "file":
            return "file", "asked for a file key"
        if store == "token":
            self.token.require_present()
            return "token", "asked for a token key"
        if store == "yubikey":
            self.yubikey.require_present()
            return "yubikey", f"asked for a YubiKey key: {self.yubikey.describe()}"
        if store == "kms":
            return "kms", "asked for a KMS key"
        if store != "auto":
            raise HsmsignError(f"unknown store {store!r}; choose one of {', '.join(STORE_CHOICES)}")
        if role != "root":
            return "file", f"{role} keys are online keys and live in files unless --store token"
        if self.yubikey_available():
            self.yubikey.require_present()  # several YubiKeys and no --serial: never a guess
            return "yubikey", f"a YubiKey is plugged in: {self.yubikey.describe()}"
        if self.token_config.candidate_modules():
            try:
                self.token.require_present()
            except TokenError as e:
                # A token the user named, or several to choose from: never a silent file.
                if self.token_config.explicit or "several tokens" in str(e):
                    raise TokenError(f"{e}; or pass {file_option} to keep the root key in a file") from None
            else:
                why = f"a PKCS#11 token is present: {self.token.token_name}"
                if "softhsm" in self.token.module.lower():
                    why += " (SoftHSM keeps keys in files: right for tests, not for a production root)"
                return "token", why
        return "file", ("no hardware token is configured and present (set HSMSIGN_PKCS11_MODULE "
                        "and HSMSIGN_TOKEN_LABEL, or plug in a YubiKey); the root key is in an "
                        "encrypted file instead")

    def generate(self, role: str, gun: str | None, alg: Algorithm, store: str, *,
                 yubikey: YubiKeyOptions | None = None,
                 file_option: str = "--store file",
                 kms: KmsOptions | None = None) -> tuple[KeyRecord, str]:
        where, why = self.choose_store(role, store, file_option=file_option)
        if kms is not None and where != "kms":
            raise HsmsignError("--kms applies to KMS keys: add --store kms")
        if where == "kms":
            return self.kms.generate(role, alg, kms, gun=gun), why
        if where == "yubikey":
            return self.yubikey.generate(role, alg, yubikey or YubiKeyOptions()), why
        if yubikey is not None:
            raise HsmsignError(f"--slot, --touch and --pin-policy apply to YubiKey keys; this "
                               f"{role} key would go to the {where} store ({why})")
        if where == "token":
            return self.token.generate(role, alg), why
        passphrase = self.secrets.new_passphrase(role)
        return self.files.add(generate_private_key(alg), role, gun, passphrase), why

    def add_private(self, key, role: str, gun: str | None, store: str, passphrase: str | None) -> KeyRecord:
        """Store an imported software key (`passphrase` protects it when it goes to a file)."""
        if store == "token":
            return self.token.import_private(key, role)
        if passphrase is None:
            passphrase = self.secrets.new_passphrase(role)
        return self.files.add(key, role, gun, passphrase)

    def remove(self, keyid: str) -> list[KeyRecord]:
        removed = self.locate(keyid)
        for record in removed:
            self.store_of(record).remove(keyid)
        return removed
