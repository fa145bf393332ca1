"""securesystemslib `Signer`s over hsmsign's stores: what `KeyStore.signer(keyid)` returns.

Any python-tuf based tool can sign with them (`Metadata.sign(signer, append=True)`). They are
made by a store, never from a URI themselves: `from_priv_key_uri` hands the URI to
securesystemslib, which finds the scheme's signer (`hsmsign:` is registered by
`hsmsign.signing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securesystemslib.signer import CryptoSigner, Key, Signature, Signer

from hsmsign.keys import tuf_key

if TYPE_CHECKING:
    from hsmsign.keystore.file import FileKeyStore
    from hsmsign.keystore.kms import KmsKeyStore


class KeyIdSigner(Signer):
    """The part every hsmsign `Signer` shares: one key ID and its recorded public key, which
    `sign` checks signatures against. Subclasses add where the signature is made (a store, a
    KMS, the signing service)."""

    def __init__(self, keyid: str, public_key: Key):
        self.keyid = keyid
        self._public_key = public_key

    @property
    def public_key(self) -> Key:
        return self._public_key


class _StoreSigner(KeyIdSigner):
    """A signer for one key of one store; the public key is read from the store if not given."""

    def __init__(self, store, keyid: str, public_key: Key | None = None):
        self.store = store
        super().__init__(keyid, public_key or tuf_key(store.public_key(keyid)))

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # pragma: no cover
        # The registered scheme's signer (for hsmsign:, hsmsign.signing.HsmsignSigner) decides.
        return Signer.from_priv_key_uri(priv_key_uri, public_key, secrets_handler)


class HardwareSigner(_StoreSigner):
    """Signs inside a hardware store (a PKCS#11 token, a YubiKey): the private key stays there."""

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public_key.keyid, self.store.sign(self.keyid, payload).hex())


class TokenSigner(HardwareSigner):
    """Signs on a PKCS#11 token; the store's one logged-in session is reused."""


class YubiKeySigner(HardwareSigner):
    """Signs in a YubiKey PIV slot: the PIN is asked once per process, the touch prompt goes
    to the CLI through the store's `notify`."""


class FileSigner(_StoreSigner):
    """Signs with an encrypted key file, decrypted on first use and kept for the process."""

    def __init__(self, store: FileKeyStore, keyid: str, public_key: Key | None = None):
        super().__init__(store, keyid, public_key)
        self._signer: CryptoSigner | None = None

    def sign(self, payload: bytes) -> Signature:
        if self._signer is None:
            self._signer = CryptoSigner(self.store.private_key(self.keyid), self._public_key)
        return self._signer.sign(payload)


class KmsSigner(_StoreSigner):
    """Signs with a recorded cloud KMS key through securesystemslib's signer for its service;
    each signature is checked against the recorded public key (`KmsKeyStore.sign`)."""

    store: KmsKeyStore

    def sign(self, payload: bytes) -> Signature:
        return self.store.sign(self.keyid, self._public_key, payload)
