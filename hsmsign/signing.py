"""securesystemslib `Signer`s backed by hsmsign's stores.

Any python-tuf based tool can sign with them (`Metadata.sign(signer, append=True)`), and the
`hsmsign:` URI scheme finds a key in whichever store holds it (hardware first):

    Signer.from_priv_key_uri("hsmsign:<keyid>", public_key, secrets_handler)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
)

from hsmsign.config import load_token_config, resolve_home
from hsmsign.errors import HsmsignError
from hsmsign.keys import tuf_key
from hsmsign.keystore.file import FileKeyStore
from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
from hsmsign.keystore.stores import KeyStores
from hsmsign.secrets import Secrets

if TYPE_CHECKING:
    pass

URI_SCHEME = "hsmsign"


class TokenSigner(Signer):
    """Signs on a PKCS#11 token; the store's one logged-in session is reused."""

    def __init__(self, store: Pkcs11KeyStore, keyid: str, public_key: Key | None = None):
        self.store = store
        self.keyid = keyid
        self._public_key = public_key or tuf_key(store.public_key(keyid))

    @property
    def public_key(self) -> Key:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public_key.keyid, self.store.sign(self.keyid, payload).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # pragma: no cover
        return HsmsignSigner.from_priv_key_uri(priv_key_uri, public_key, secrets_handler)


class FileSigner(Signer):
    """Signs with an encrypted key file, decrypted on first use and kept for the process."""

    def __init__(self, store: FileKeyStore, keyid: str, public_key: Key | None = None):
        self.store = store
        self.keyid = keyid
        self._public_key = public_key or tuf_key(store.public_key(keyid))
        self._signer: CryptoSigner | None = None

    @property
    def public_key(self) -> Key:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        if self._signer is None:
            self._signer = CryptoSigner(self.store.private_key(self.keyid), self._public_key)
        return self._signer.sign(payload)

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # pragma: no cover
        return HsmsignSigner.from_priv_key_uri(priv_key_uri, public_key, secrets_handler)


def signer_for(stores: KeyStores, keyid: str, public_key: Key | None = None) -> Signer:
    """A signer for `keyid` from the best store that holds it (a token before a file)."""
    record = stores.locate(keyid)[0]
    if public_key is not None and public_key.keyid != keyid:
        raise HsmsignError(f"public key {public_key.keyid} does not belong to key {keyid}")
    if record.store == "token":
        return TokenSigner(stores.token, keyid, public_key)
    return FileSigner(stores.files, keyid, public_key)


class _HandlerPrompter:
    """Lets a securesystemslib secrets handler answer hsmsign's prompts."""

    def __init__(self, handler: SecretsHandler):
        self.handler = handler

    def ask_secret(self, prompt: str) -> str:
        return self.handler(prompt.strip().rstrip(":"))

    def tell(self, message: str) -> None:
        pass


class HsmsignSigner(Signer):
    """Entry point for `hsmsign:<keyid>` URIs; the home comes from `$HSMSIGN_HOME`."""

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> Signer:
        scheme, _, keyid = priv_key_uri.partition(":")
        if scheme != URI_SCHEME or not keyid:
            raise ValueError(f"not an {URI_SCHEME}: key URI: {priv_key_uri}")
        home = resolve_home(None)
        secrets = Secrets(prompter=_HandlerPrompter(secrets_handler) if secrets_handler else None)
        stores = KeyStores(home, secrets, load_token_config(home))
        return signer_for(stores, stores.resolve(keyid), public_key)

    @property
    def public_key(self) -> Key:  # pragma: no cover - never instantiated
        raise NotImplementedError

    def sign(self, payload: bytes) -> Signature:  # pragma: no cover - never instantiated
        raise NotImplementedError


SIGNER_FOR_URI_SCHEME[URI_SCHEME] = HsmsignSigner
