"""Writing a private key encrypted: the PKCS#8 PEM hsmsign keeps, and the PEM notary and
`docker trust key load` read."""

from __future__ import annotations

from asn1crypto import keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from hsmsign.pkcs8.keyinfo import OID_NOTARY_ED25519, OneAsymmetricKey, check_supported
from hsmsign.pkcs8.pbes2 import pbes2_encrypt
from hsmsign.pkcs8.pem import LABEL_ENCRYPTED_PKCS8, check_header, pem_encode


def _check_key_for_writing(key: object) -> None:
    if not isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise TypeError("key must be an RSA, EC or Ed25519 private key object")
    check_supported(key)


def _check_passphrase_for_writing(passphrase: bytes) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise ValueError("passphrase must not be empty")
    return bytes(passphrase)


def encrypt_private_key_pem(
    key: PrivateKeyTypes,
    passphrase: bytes,
    headers: dict[str, str] | None = None,
    *,
    prf: str = "sha256",
    iterations: int = 600_000,
    salt_length: int = 16,
) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` of ``key``.

    PKCS#8 EncryptedPrivateKeyInfo with PBES2: PBKDF2 (``prf`` "sha256" writes
    hmacWithSHA256 explicitly; "sha1" omits the PRF field, the DER default;
    "sha224"/"sha384"/"sha512" are also accepted), random salt of
    ``salt_length`` bytes, AES-256-CBC with a random IV. The inner
    PrivateKeyInfo is cryptography's standard PKCS#8 DER of the key.
    ``headers`` are written as ``name: value`` lines after the BEGIN line,
    followed by a blank line, as notary does.
    """
    _check_key_for_writing(key)
    passphrase = _check_passphrase_for_writing(passphrase)
    if headers:
        for name, value in headers.items():
            check_header(name, value)
    inner = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = pbes2_encrypt(
        inner, passphrase, prf=prf, iterations=iterations, salt_length=salt_length
    )
    return pem_encode(LABEL_ENCRYPTED_PKCS8, der, headers)


def _notary_inner_der(key: PrivateKeyTypes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # notary only parses Ed25519 under its own OID with the 96-byte body
        # public || seed || public; Go's x509 result for OID 1.3.101.112 hits
        # "unsupported key type" in parsePKCS8ToTufKey.
        seed = key.private_bytes_raw()
        public = key.public_key().public_bytes_raw()
        return OneAsymmetricKey(
            {
                "version": 0,
                "private_key_algorithm": keys.PrivateKeyAlgorithm(
                    {"algorithm": OID_NOTARY_ED25519}
                ),
                "private_key": public + seed + public,
            }
        ).dump()
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def encrypt_notary_pem(
    key: PrivateKeyTypes,
    passphrase: bytes,
    headers: dict[str, str],
    *,
    iterations: int = 600_000,
    salt_length: int = 16,
) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` that notary / ``docker trust key load`` reads.

    What notary's reader requires (theupdateframework/notary, read at
    tuf/utils/x509.go ``ParsePEMPrivateKey``/``parsePEMPrivateKey`` and
    tuf/utils/pkcs8.go ``ParsePKCS8ToTufKey``/``parsePKCS8ToTufKey``):

    * PEM type "ENCRYPTED PRIVATE KEY"; the first block (Go ``pem.Decode``);
      ``role``/``gun`` headers are read by ``ExtractPrivateKeyAttributes`` and
      ``trustmanager.ImportKeys``.
    * EncryptedPrivateKeyInfo with PBES2 + PBKDF2 and AES-256-CBC only
      ("pkcs8: only AES-256-CBC supported").
    * PBKDF2 is always run with ``sha1.New`` and a 32-byte key: the Go struct
      ``pbkdf2Params{Salt, IterationCount}`` ignores any PRF field, so the PRF
      must be (and here is) absent = HMAC-SHA1.
    * Salt is a []byte of any length and IterationCount any int: notary itself
      writes 8 bytes / 2048 iterations (``convertTUFKeyToPKCS8Encrypted``),
      but its reader accepts any, so we write a 16-byte salt and 600,000
      iterations by default.
    * Padding is not checked (``asn1.Unmarshal`` ignores trailing bytes); we
      write standard PKCS#7 padding, as notary does.
    * Inner structure: ``parsePKCS8ToTufKey`` handles notary's Ed25519 OID
      1.3.6.1.4.1.11591.15.1 itself (``ED25519ToPrivateKey``: exactly 96 bytes,
      public || seed || public); everything else goes to Go's
      ``x509.ParsePKCS8PrivateKey``, which does not check the PrivateKeyInfo
      version or the RSA NULL parameter, and then only RSA and ECDSA are
      accepted. So RSA and EC use cryptography's standard PKCS#8 (version 0,
      which Go accepts; notary itself writes 1 for EC) and Ed25519 uses
      notary's OID and 96-byte form.
    """
    _check_key_for_writing(key)
    passphrase = _check_passphrase_for_writing(passphrase)
    if headers is None:
        headers = {}
    for name, value in headers.items():
        check_header(name, value)
    der = pbes2_encrypt(
        _notary_inner_der(key),
        passphrase,
        prf="sha1",
        iterations=iterations,
        salt_length=salt_length,
    )
    return pem_encode(LABEL_ENCRYPTED_PKCS8, der, headers)


def public_key_of(key: PrivateKeyTypes) -> PublicKeyTypes:
    """The public key of a private key object."""
    return key.public_key()
