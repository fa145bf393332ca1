"""The key-store interface every kind of store implements, and the kinds there are.

A store holds private keys somewhere (encrypted files, a PKCS#11 token, YubiKey PIV slots, ...)
and offers the same methods with the same signatures, so that `KeyStores` (stores.py) can list,
find, make, import, remove and sign with keys without knowing where they live. The shape is
securesystemslib's `Signer`: one small abstract class, one module per backend, a registry
(`stores.STORE_FOR_KIND`, as `SIGNER_FOR_URI_SCHEME`) that maps a kind to its class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )
    from securesystemslib.signer import Key, Signer

    from hsmsign.config import TokenConfig
    from hsmsign.keys import Algorithm, KeyRecord
    from hsmsign.secrets import Secrets


class StoreKind(StrEnum):
    """Where a key lives. The value is what `key list`, `--store` and JSON output show, so a
    `StoreKind` compares, prints and serialises as that plain string."""

    FILE = "file"
    TOKEN = "token"
    YUBIKEY = "yubikey"
    KMS = "kms"


@dataclass(frozen=True)
class StoreContext:
    """What a store of any kind may need to open for one home (each takes what it uses)."""

    home: Path
    secrets: Secrets
    token_config: TokenConfig
    force: bool = False  # go ahead where a store would stop to protect (e.g. the last PIN try)
    kdf_iterations: int | None = None  # file keys: PBKDF2 iterations (None: the default)
    notify: Callable[[str], None] | None = None  # messages for the person (touch prompts)
    yubikey_devices: Callable[[], list] | None = None  # YubiKeys to use (None: PC/SC)


@dataclass
class Listing:
    """What `key list` shows of one store or of all: the keys, and why some may be missing."""

    keys: list[KeyRecord]
    warnings: list[str] = field(default_factory=list)


class KeyStore(ABC):
    """One kind of place that holds private keys. Every method here has the same signature in
    every store; a store adds what only it can do (a YubiKey's attestation, a file key's
    passphrase change) beside them."""

    kind: ClassVar[StoreKind]

    @classmethod
    @abstractmethod
    def for_home(cls, context: StoreContext) -> KeyStore:
        """The store of this kind for one home (what the registry calls)."""

    # -- can it be used -------------------------------------------------------------------

    @abstractmethod
    def enabled(self) -> bool:
        """Whether this home uses the store at all (configured, not switched off), before
        any device is looked for."""

    @abstractmethod
    def is_present(self) -> bool:
        """Whether the store can be reached now (its device is plugged in); never raises."""

    @abstractmethod
    def require_present(self) -> None:
        """Nothing, or an `HsmsignError` saying precisely why the store cannot be used now."""

    # -- keys -----------------------------------------------------------------------------

    @abstractmethod
    def keyids(self) -> list[str]:
        """The TUF key IDs of every key held here."""

    @abstractmethod
    def list_keys(self) -> list[KeyRecord]:
        """A record (role, algorithm, location, ...) of every key held here."""

    @abstractmethod
    def record(self, keyid: str) -> KeyRecord:
        """The record of one key; `KeyNotFound` if it is not here."""

    @abstractmethod
    def public_key(self, keyid: str) -> PublicKeyTypes:
        """The public key of one key (never needs a PIN or passphrase)."""

    @abstractmethod
    def listing(self) -> Listing:
        """What `key list` shows of this store: its keys when it is enabled and present, and
        a warning instead of an error when it cannot be read."""

    # -- changes --------------------------------------------------------------------------

    @abstractmethod
    def generate(self, role: str, alg: Algorithm, options: Any = None, *,
                 gun: str | None = None) -> KeyRecord:
        """A new key made by the store. `options` are the store's own (e.g. a YubiKey's slot
        and policies; None: its defaults); `gun` is kept where the store keeps one."""

    @abstractmethod
    def import_key(self, key: PrivateKeyTypes, role: str, options: Any = None, *,
                   gun: str | None = None, passphrase: str | None = None) -> KeyRecord:
        """Put a software private key into the store. `passphrase` protects it where the store
        encrypts keys itself (files; None: ask for a new one); other stores ignore it."""

    @abstractmethod
    def remove(self, keyid: str) -> None:
        """Destroy the key here; `KeyNotFound` if it is not here."""

    # -- use ------------------------------------------------------------------------------

    @abstractmethod
    def signer(self, keyid: str, public_key: Key | None = None) -> Signer:
        """A securesystemslib `Signer` for the key; `public_key` (default: read from the
        store) is the key its signatures are made for."""

    @abstractmethod
    def close(self) -> None:
        """Release sessions and devices (the store may be used again afterwards)."""

    # -- choosing a store for a new key ---------------------------------------------------

    @abstractmethod
    def reason_asked(self) -> str:
        """Why a new key goes here when the user asked for this store (`--store KIND`), for
        the user; raises when the store cannot take one now."""

    @abstractmethod
    def reason_auto_root(self, file_option: str) -> str | None:
        """Why a new root key goes here under `--store auto`, or None to let the next store in
        the preference take it; raises when falling through would be a silent guess
        (`file_option` is how the command asks for a file key instead)."""
