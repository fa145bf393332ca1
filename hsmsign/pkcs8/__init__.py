"""Reading and writing private keys in the formats Docker Content Trust / notary use.

Pure functions over bytes: nothing here prints, prompts or touches the file system.

Reading (:func:`load_private_key`) accepts:

* PKCS#8 ``PRIVATE KEY`` and ``ENCRYPTED PRIVATE KEY`` (PBES2 / PBKDF2 with
  HMAC-SHA1/224/256/384/512 / AES-128/192/256-CBC), including notary's PEM
  headers (``role:``, ``gun:``, ``path:``) and notary's quirks inside the
  PKCS#8 structure (EC keys with version 1, RSA keys without the NULL
  algorithm parameter, Ed25519 with OID 1.3.6.1.4.1.11591.15.1 and a 96-byte
  ``public || seed || public`` body);
* standard Ed25519 PKCS#8 (OID 1.3.101.112);
* SEC1 ``EC PRIVATE KEY`` and PKCS#1 ``RSA PRIVATE KEY``, plain or with the
  legacy OpenSSL PEM encryption (``Proc-Type: 4,ENCRYPTED`` / ``DEK-Info``),
  also with notary's extra ``role:`` header;
* bare DER of the above (PKCS#8, encrypted PKCS#8, SEC1, PKCS#1).

Only keys TUF can use are returned: RSA, ECDSA on P-256/P-384/P-521, Ed25519.

Every failure is a :class:`KeyFormatError` (a ``ValueError``) whose message
never contains key material or the passphrase.

The parts: `pem` (PEM blocks), `pbes2` (PKCS#8 encryption), `keyinfo` (the PrivateKeyInfo
inside, notary's quirks), `reading` and `writing`; the names below are the public face.
"""

from hsmsign.pkcs8.errors import KeyFormatError, PassphraseRequired, WrongPassphrase
from hsmsign.pkcs8.pem import PemBlock, read_private_key_pem

# Reading and writing key bodies need asn1crypto (~20 ms to import); listing keys or backing
# them up reads only the PEM, so those names load on first use.
_LAZY = {"load_private_key": "reading", "encrypt_private_key_pem": "writing",
         "encrypt_notary_pem": "writing", "public_key_of": "writing"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"hsmsign.pkcs8.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KeyFormatError",
    "PassphraseRequired",
    "WrongPassphrase",
    "PemBlock",
    "read_private_key_pem",
    "load_private_key",
    "encrypt_private_key_pem",
    "encrypt_notary_pem",
    "public_key_of",
]
