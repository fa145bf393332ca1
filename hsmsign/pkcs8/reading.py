"""Reading a private key from PEM or bare DER, whichever format DCT / notary / OpenSSL wrote:
PKCS#8 (encrypted or not), SEC1 and PKCS#1 (plain, or with legacy OpenSSL PEM encryption)."""

from __future__ import annotations

import re

from asn1crypto import keys
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hsmsign.pkcs8.errors import KeyFormatError, PassphraseRequired, WrongPassphrase
from hsmsign.pkcs8.keyinfo import OneAsymmetricKey, check_supported, load_der, load_pkcs8
from hsmsign.pkcs8.pbes2 import pbes2_decrypt
from hsmsign.pkcs8.pem import (
    LABEL_ENCRYPTED_PKCS8,
    LABEL_PKCS8,
    PemBlock,
    pem_encode_raw,
    read_private_key_pem,
)

# Legacy OpenSSL PEM encryption (DEK-Info) ciphers: name -> (IV length, block size).
_LEGACY_CIPHERS = {
    "AES-128-CBC": (16, 16),
    "AES-192-CBC": (16, 16),
    "AES-256-CBC": (16, 16),
    "DES-EDE3-CBC": (8, 8),
}


def load_private_key(data: bytes, passphrase: bytes | None) -> PrivateKeyTypes:
    """Load a private key from PEM (or DER) bytes.

    Returns an ``RSAPrivateKey``, ``EllipticCurvePrivateKey`` (P-256, P-384,
    P-521) or ``Ed25519PrivateKey``. Raises :class:`PassphraseRequired` when
    the key is encrypted and ``passphrase`` is None, :class:`WrongPassphrase`
    when decryption fails, and :class:`KeyFormatError` for anything else
    (corrupt, truncated, not a key, unsupported key type or curve). The
    passphrase is ignored for unencrypted keys.
    """
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if passphrase is not None and not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError("passphrase must be bytes or None")
    if passphrase is not None:
        passphrase = bytes(passphrase)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    data = bytes(data)

    if b"-----BEGIN" not in data and data[:1] == b"\x30":
        return _load_der(data, passphrase)

    block = read_private_key_pem(data)
    if block.label == LABEL_ENCRYPTED_PKCS8:
        if passphrase is None:
            raise PassphraseRequired("the private key is encrypted: a passphrase is required")
        inner = pbes2_decrypt(block.der, passphrase)
        return load_pkcs8(inner, decrypted=True)
    if block.label == LABEL_PKCS8:
        return load_pkcs8(block.der, decrypted=False)
    # SEC1 "EC PRIVATE KEY" / PKCS#1 "RSA PRIVATE KEY"
    if block.encrypted:
        if passphrase is None:
            raise PassphraseRequired("the private key is encrypted: a passphrase is required")
        return _load_legacy_encrypted(block, passphrase)
    return _load_traditional_der(block.der, block.label)


def _load_der(der: bytes, passphrase: bytes | None) -> PrivateKeyTypes:
    """Bare DER: encrypted PKCS#8, PKCS#8, SEC1 or PKCS#1."""
    if _looks_like_encrypted_pkcs8(der):
        if passphrase is None:
            raise PassphraseRequired("the private key is encrypted: a passphrase is required")
        return load_pkcs8(pbes2_decrypt(der, passphrase), decrypted=True)
    if _looks_like_pkcs8(der):
        return load_pkcs8(der, decrypted=False)
    return _load_traditional_der(der, "DER")


def _looks_like_encrypted_pkcs8(der: bytes) -> bool:
    try:
        epki = keys.EncryptedPrivateKeyInfo.load(der, strict=True)
        epki["encryption_algorithm"]["algorithm"].dotted  # noqa: B018 (forces parsing)
        return isinstance(epki["encrypted_data"].native, bytes)
    except Exception:  # noqa: BLE001 - any parse failure means "not this structure"
        return False


def _looks_like_pkcs8(der: bytes) -> bool:
    try:
        pki = OneAsymmetricKey.load(der, strict=True)
        pki["private_key_algorithm"]["algorithm"].dotted  # noqa: B018
        return True
    except Exception:  # noqa: BLE001
        return False


def _load_traditional_der(der: bytes, what: str) -> PrivateKeyTypes:
    """Unencrypted SEC1 / PKCS#1 DER, handed to cryptography."""
    return load_der(der, unsupported=f"unsupported key in {what} data",
                    corrupt=f"corrupt or truncated {what} private key")


def _load_legacy_encrypted(block: PemBlock, passphrase: bytes) -> PrivateKeyTypes:
    """Legacy OpenSSL PEM encryption: cryptography does the work once the
    non-standard header lines (notary's ``role:`` etc.) are removed."""
    dek_info = block.header("DEK-Info")
    if dek_info is None:
        raise KeyFormatError(f"encrypted {block.label} PEM block has no DEK-Info header")
    cipher_name, _, iv_hex = dek_info.partition(",")
    cipher_name = cipher_name.strip().upper()
    iv_hex = iv_hex.strip()
    if cipher_name not in _LEGACY_CIPHERS:
        raise KeyFormatError(f"unsupported legacy PEM encryption {cipher_name!r}")
    iv_len, block_size = _LEGACY_CIPHERS[cipher_name]
    if not re.fullmatch(r"[0-9A-Fa-f]+", iv_hex or "x") or len(iv_hex) != 2 * iv_len:
        raise KeyFormatError("malformed DEK-Info header (bad IV)")
    if not block.der or len(block.der) % block_size:
        raise KeyFormatError(f"truncated or corrupt encrypted {block.label}")

    clean = pem_encode_raw(
        block.label,
        block.der,
        [("Proc-Type", "4,ENCRYPTED"), ("DEK-Info", f"{cipher_name},{iv_hex}")],
    )
    try:
        key = serialization.load_pem_private_key(clean, password=passphrase)
    except UnsupportedAlgorithm:
        raise KeyFormatError(f"unsupported key in {block.label} PEM block") from None
    except (ValueError, TypeError):
        # The structure around the ciphertext was checked above, so a failure
        # here is a bad decrypt (bad padding or garbage plaintext). Legacy PEM
        # encryption has no integrity check: a file truncated on a cipher block
        # boundary looks the same as a wrong passphrase.
        raise WrongPassphrase(
            f"could not decrypt the {block.label}: wrong passphrase (or corrupt key data)"
        ) from None
    check_supported(key)
    return key
