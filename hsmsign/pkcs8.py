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
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from asn1crypto import algos, core, keys
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

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


# --------------------------------------------------------------------------
# Errors


class KeyFormatError(ValueError):
    """The data is corrupt, truncated, not a private key, or an unsupported key."""


class PassphraseRequired(KeyFormatError):
    """The key is encrypted and no passphrase was given."""


class WrongPassphrase(KeyFormatError):
    """The key could not be decrypted with the given passphrase."""


# --------------------------------------------------------------------------
# Constants

LABEL_ENCRYPTED_PKCS8 = "ENCRYPTED PRIVATE KEY"
LABEL_PKCS8 = "PRIVATE KEY"
LABEL_SEC1 = "EC PRIVATE KEY"
LABEL_PKCS1 = "RSA PRIVATE KEY"
PRIVATE_KEY_LABELS = (LABEL_ENCRYPTED_PKCS8, LABEL_PKCS8, LABEL_SEC1, LABEL_PKCS1)

OID_RSA = "1.2.840.113549.1.1.1"
OID_EC = "1.2.840.10045.2.1"
OID_ED25519 = "1.3.101.112"
# notary's Ed25519 OID (tuf/utils/pkcs8.go: oidPublicKeyED25519).
OID_NOTARY_ED25519 = "1.3.6.1.4.1.11591.15.1"

# asn1crypto curve names of the curves TUF signs with.
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_CURVE_DISPLAY = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

_PRF_HASHES = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_AES_CBC_KEY_LENGTHS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}

# Refuse absurd PBKDF2 iteration counts in files we read (a hostile file
# could otherwise make us spin for hours).
MAX_PBKDF2_ITERATIONS = 10_000_000

# Legacy OpenSSL PEM encryption (DEK-Info) ciphers: name -> (IV length, block size).
_LEGACY_CIPHERS = {
    "AES-128-CBC": (16, 16),
    "AES-192-CBC": (16, 16),
    "AES-256-CBC": (16, 16),
    "DES-EDE3-CBC": (8, 8),
}

_UNSUPPORTED_ALGORITHM_NAMES = {
    "dsa": "DSA",
    "rsassa_pss": "RSASSA-PSS",
    "x25519": "X25519",
    "x448": "X448",
    "ed448": "Ed448",
}


# --------------------------------------------------------------------------
# ASN.1 structures


class _OneAsymmetricKey(core.Sequence):
    """PKCS#8 PrivateKeyInfo / RFC 5958 OneAsymmetricKey, with the private key
    left as an opaque OCTET STRING.

    asn1crypto's ``keys.PrivateKeyInfo`` picks the inner type from the
    algorithm OID and fails on OIDs it does not know (such as notary's Ed25519
    OID), and has no field for the RFC 5958 ``publicKey``; this variant reads
    both so that we can inspect and normalise the structure.
    """

    _fields = [
        ("version", core.Integer),
        ("private_key_algorithm", keys.PrivateKeyAlgorithm),
        ("private_key", core.OctetString),
        ("attributes", keys.Attributes, {"implicit": 0, "optional": True}),
        ("public_key", core.BitString, {"implicit": 1, "optional": True}),
    ]


# --------------------------------------------------------------------------
# PEM


@dataclass(frozen=True)
class PemBlock:
    """One private-key PEM block."""

    label: str  # "ENCRYPTED PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"
    headers: dict[str, str]  # "Name: value" header lines, in order, names as written
    der: bytes  # base64-decoded body

    @property
    def encrypted(self) -> bool:
        if self.label == LABEL_ENCRYPTED_PKCS8:
            return True
        proc_type = self._header("Proc-Type")
        if proc_type is None:
            return False
        return proc_type.replace(" ", "").upper() == "4,ENCRYPTED"

    def _header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def __repr__(self) -> str:  # never show key bytes in reprs / logs
        return (
            f"PemBlock(label={self.label!r}, headers={self.headers!r}, "
            f"der=<{len(self.der)} bytes>)"
        )


_BEGIN_RE = re.compile(r"-----BEGIN ([A-Z0-9][A-Z0-9 ]*?)-----")


def read_private_key_pem(data: bytes) -> PemBlock:
    """Return the first private-key PEM block in ``data``.

    Blocks of other types (certificates, public keys) are skipped. CRLF line
    ends, text before and after the block and RFC 1421-style ``Name: value``
    header lines are tolerated. Raises :class:`KeyFormatError` when there is
    no private-key block, when it has no END line, or when its base64 is broken.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    text = bytes(data).decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")

    pos = 0
    while True:
        begin = _BEGIN_RE.search(text, pos)
        if begin is None:
            raise KeyFormatError("no private key PEM block found")
        label = begin.group(1)
        end_marker = f"-----END {label}-----"
        end = text.find(end_marker, begin.end())
        if label not in PRIVATE_KEY_LABELS:
            # Skip this block (or just its BEGIN line if it has no END).
            pos = end + len(end_marker) if end >= 0 else begin.end()
            continue
        if end < 0:
            raise KeyFormatError(f"truncated PEM: no END line for {label}")
        return _parse_pem_body(label, text[begin.end() : end])


def _parse_pem_body(label: str, body: str) -> PemBlock:
    lines = [line.strip() for line in body.split("\n")]
    # The BEGIN line's own line end leaves an empty first element.
    if lines and lines[0] == "":
        lines = lines[1:]
    headers: dict[str, str] = {}
    i = 0
    while i < len(lines) and ":" in lines[i]:
        name, value = lines[i].split(":", 1)
        name = name.strip()
        if not name:
            raise KeyFormatError(f"malformed header line in {label} PEM block")
        headers[name] = value.strip()
        i += 1
    b64 = "".join("".join(line.split()) for line in lines[i:])
    if not b64:
        raise KeyFormatError(f"empty {label} PEM block")
    try:
        der = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise KeyFormatError(f"broken base64 in {label} PEM block") from None
    if not der:
        raise KeyFormatError(f"empty {label} PEM block")
    return PemBlock(label=label, headers=headers, der=der)


def _pem_encode(label: str, der: bytes, headers: dict[str, str] | None) -> bytes:
    """PEM with validated ``name: value`` header lines, a blank line, 64-column base64."""
    items = list((headers or {}).items())
    for name, value in items:
        _check_header(name, value)
    return _pem_encode_raw(label, der, items)


def _check_header(name: str, value: str) -> None:
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError("PEM header names and values must be str")
    if (
        not name
        or ":" in name
        or any(c.isspace() for c in name)
        or not name.isascii()
        or not name.isprintable()
    ):
        raise ValueError(f"invalid PEM header name {name!r}")
    if name.lower() in ("proc-type", "dek-info"):
        raise ValueError(f"PEM header {name!r} is reserved for legacy PEM encryption")
    if "\n" in value or "\r" in value or not value.isascii() or not value.isprintable():
        raise ValueError(f"invalid value for PEM header {name!r}")
    if value != value.strip():
        raise ValueError(f"value for PEM header {name!r} has surrounding whitespace")


# --------------------------------------------------------------------------
# Loading


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
        inner = _pbes2_decrypt(block.der, passphrase)
        return _load_pkcs8(inner, decrypted=True)
    if block.label == LABEL_PKCS8:
        return _load_pkcs8(block.der, decrypted=False)
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
        return _load_pkcs8(_pbes2_decrypt(der, passphrase), decrypted=True)
    if _looks_like_pkcs8(der):
        return _load_pkcs8(der, decrypted=False)
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
        pki = _OneAsymmetricKey.load(der, strict=True)
        pki["private_key_algorithm"]["algorithm"].dotted  # noqa: B018
        return True
    except Exception:  # noqa: BLE001
        return False


def _load_traditional_der(der: bytes, what: str) -> PrivateKeyTypes:
    """Unencrypted SEC1 / PKCS#1 DER, handed to cryptography."""
    try:
        key = serialization.load_der_private_key(der, password=None)
    except UnsupportedAlgorithm:
        raise KeyFormatError(f"unsupported key in {what} data") from None
    except (ValueError, TypeError):
        raise KeyFormatError(f"corrupt or truncated {what} private key") from None
    _check_supported(key)
    return key


def _load_legacy_encrypted(block: PemBlock, passphrase: bytes) -> PrivateKeyTypes:
    """Legacy OpenSSL PEM encryption: cryptography does the work once the
    non-standard header lines (notary's ``role:`` etc.) are removed."""
    dek_info = block._header("DEK-Info")
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

    clean = _pem_encode_raw(
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
    _check_supported(key)
    return key


def _pem_encode_raw(label: str, der: bytes, headers: list[tuple[str, str]]) -> bytes:
    """PEM with header lines as given (not validated; callers check them)."""
    out = [f"-----BEGIN {label}-----\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\n")
    if headers:
        out.append("\n")
    b64 = base64.b64encode(der).decode("ascii")
    for i in range(0, len(b64), 64):
        out.append(b64[i : i + 64] + "\n")
    out.append(f"-----END {label}-----\n")
    return "".join(out).encode("ascii")


def _pbes2_decrypt(der: bytes, passphrase: bytes) -> bytes:
    """Decrypt a PKCS#8 EncryptedPrivateKeyInfo (PBES2 only); returns the inner DER."""
    try:
        epki = keys.EncryptedPrivateKeyInfo.load(der, strict=True)
        enc_alg = epki["encryption_algorithm"]
        scheme = enc_alg["algorithm"].native
        ciphertext = epki["encrypted_data"].native
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt or truncated ENCRYPTED PRIVATE KEY") from None
    if scheme != "pbes2":
        raise KeyFormatError(
            f"unsupported PKCS#8 encryption {scheme!r}: only PBES2 is supported"
        )
    try:
        params = enc_alg["parameters"]
        kdf = params["key_derivation_func"]
        kdf_name = kdf["algorithm"].native
        enc_scheme = params["encryption_scheme"]
        cipher_name = enc_scheme["algorithm"].native
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt PBES2 parameters") from None
    if kdf_name != "pbkdf2":
        raise KeyFormatError(f"unsupported PBES2 key derivation {kdf_name!r}: only PBKDF2")
    if cipher_name not in _AES_CBC_KEY_LENGTHS:
        raise KeyFormatError(
            f"unsupported PBES2 cipher {cipher_name!r}: only AES-128/192/256-CBC"
        )
    try:
        kdf_params = kdf["parameters"]
        salt_choice = kdf_params["salt"]
        if salt_choice.name != "specified":
            raise KeyFormatError("unsupported PBKDF2 salt source")
        salt = salt_choice.chosen.native
        iterations = kdf_params["iteration_count"].native
        key_length = kdf_params["key_length"].native
        prf = kdf_params["prf"]["algorithm"].native  # asn1crypto supplies the sha1 default
        iv = enc_scheme["parameters"].native
    except KeyFormatError:
        raise
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt PBES2 parameters") from None
    if prf not in _PRF_HASHES:
        raise KeyFormatError(f"unsupported PBKDF2 PRF {prf!r}")
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise KeyFormatError("unsupported PBKDF2 iteration count")
    if not isinstance(salt, bytes):
        raise KeyFormatError("corrupt PBKDF2 salt")
    cipher_key_len = _AES_CBC_KEY_LENGTHS[cipher_name]
    if key_length is not None and key_length != cipher_key_len:
        raise KeyFormatError("PBKDF2 key length does not match the cipher")
    if not isinstance(iv, bytes) or len(iv) != 16:
        raise KeyFormatError("corrupt AES-CBC IV in PBES2 parameters")
    if not ciphertext or len(ciphertext) % 16:
        raise KeyFormatError("truncated or corrupt encrypted key data")

    symkey = PBKDF2HMAC(
        algorithm=_PRF_HASHES[prf](),
        length=cipher_key_len,
        salt=salt,
        iterations=iterations,
    ).derive(passphrase)
    decryptor = Cipher(algorithms.AES(symkey), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise WrongPassphrase(
            "could not decrypt the ENCRYPTED PRIVATE KEY: wrong passphrase"
        ) from None


def _load_pkcs8(der: bytes, *, decrypted: bool) -> PrivateKeyTypes:
    """Load a PKCS#8 PrivateKeyInfo, normalising notary's quirks first.

    ``decrypted``: the DER came out of a decryption, so a structure that does
    not parse means the passphrase was wrong.
    """
    try:
        pki = _OneAsymmetricKey.load(der, strict=True)
        version = pki["version"].native
        alg = pki["private_key_algorithm"]
        oid = alg["algorithm"].dotted
        alg_name = alg["algorithm"].native
        raw = pki["private_key"].native
        public = pki["public_key"].native
    except Exception:  # noqa: BLE001
        if decrypted:
            raise WrongPassphrase(
                "could not decrypt the ENCRYPTED PRIVATE KEY: wrong passphrase"
            ) from None
        raise KeyFormatError("corrupt or truncated PKCS#8 private key") from None
    if version not in (0, 1):
        raise KeyFormatError(f"unsupported PKCS#8 version {version}")
    if not isinstance(raw, bytes):
        raise KeyFormatError("corrupt PKCS#8 private key")

    if oid == OID_NOTARY_ED25519:
        return _load_notary_ed25519(raw)
    if oid == OID_ED25519:
        return _load_std_ed25519(raw, public)
    if oid == OID_RSA:
        # notary omits the NULL parameter; put it back.
        algorithm = {"algorithm": "rsa", "parameters": core.Null()}
        what = "RSA"
    elif oid == OID_EC:
        curve = _pkcs8_ec_curve(alg, raw)
        named = keys.ECDomainParameters(name="named", value=curve)
        algorithm = {"algorithm": "ec", "parameters": named}
        what = "EC"
    else:
        name = _UNSUPPORTED_ALGORITHM_NAMES.get(alg_name, f"algorithm OID {oid}")
        raise KeyFormatError(f"unsupported key: {name} (TUF keys are RSA, ECDSA or Ed25519)")

    try:
        # Version 0, no attributes, no public key: what every reader accepts
        # (notary writes EC keys with version 1).
        normalised = keys.PrivateKeyInfo(
            {
                "version": 0,
                "private_key_algorithm": keys.PrivateKeyAlgorithm(algorithm),
                "private_key": core.ParsableOctetString(raw),
            }
        ).dump()
    except Exception:  # noqa: BLE001
        raise KeyFormatError(f"corrupt {what} private key in PKCS#8") from None
    try:
        key = serialization.load_der_private_key(normalised, password=None)
    except UnsupportedAlgorithm:
        raise KeyFormatError(f"unsupported {what} private key") from None
    except (ValueError, TypeError):
        raise KeyFormatError(f"corrupt {what} private key in PKCS#8") from None
    _check_supported(key)
    return key


def _pkcs8_ec_curve(alg: keys.PrivateKeyAlgorithm, raw: bytes) -> str:
    """The named curve of a PKCS#8 EC key, from the algorithm parameters or,
    if they are absent, from the inner SEC1 structure."""
    try:
        params = alg["parameters"]
        if params is None or isinstance(params, core.Void):
            inner = keys.ECPrivateKey.load(raw, strict=True)
            params = inner["parameters"]
        if params is None or isinstance(params, core.Void):
            raise KeyFormatError("EC private key does not name its curve")
        kind = params.name
        curve = params.chosen.native if kind == "named" else None
    except KeyFormatError:
        raise
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt EC parameters in PKCS#8") from None
    if kind != "named":
        raise KeyFormatError("unsupported key: EC with explicit curve parameters")
    if curve not in SUPPORTED_CURVES:
        raise KeyFormatError(
            f"unsupported key: EC curve {curve} (TUF supports P-256, P-384, P-521)"
        )
    return curve


def _load_notary_ed25519(raw: bytes) -> ed25519.Ed25519PrivateKey:
    # notary: ED25519ToPrivateKey takes public(32) || Go ed25519.PrivateKey(64),
    # and Go's private key is seed(32) || public(32).
    if len(raw) != 96:
        raise KeyFormatError("malformed notary Ed25519 key: body must be 96 bytes")
    embedded_pub, seed, second_pub = raw[:32], raw[32:64], raw[64:]
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    derived = key.public_key().public_bytes_raw()
    if derived != embedded_pub or derived != second_pub:
        raise KeyFormatError(
            "malformed notary Ed25519 key: embedded public key does not match the private key"
        )
    return key


def _load_std_ed25519(raw: bytes, public: bytes | None) -> ed25519.Ed25519PrivateKey:
    # RFC 8410: privateKey OCTET STRING wraps CurvePrivateKey ::= OCTET STRING (32 bytes)
    try:
        seed = core.OctetString.load(raw, strict=True).native
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt Ed25519 private key in PKCS#8") from None
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise KeyFormatError("corrupt Ed25519 private key in PKCS#8: seed must be 32 bytes")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    if public is not None:
        if bytes(public) != key.public_key().public_bytes_raw():
            raise KeyFormatError(
                "corrupt Ed25519 private key: embedded public key does not match"
            )
    return key


def _check_supported(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in SUPPORTED_CURVES:
            raise KeyFormatError(
                f"unsupported key: EC curve {key.curve.name} "
                "(TUF supports P-256, P-384, P-521)"
            )
        return
    if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        return
    raise KeyFormatError(
        f"unsupported key: {type(key).__name__.lstrip('_')} "
        "(TUF keys are RSA, ECDSA or Ed25519)"
    )


# --------------------------------------------------------------------------
# Writing


def _check_key_for_writing(key: object) -> None:
    if not isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise TypeError("key must be an RSA, EC or Ed25519 private key object")
    _check_supported(key)


def _check_passphrase_for_writing(passphrase: bytes) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise ValueError("passphrase must not be empty")
    return bytes(passphrase)


def _pbes2_encrypt(
    inner_der: bytes, passphrase: bytes, *, prf: str, iterations: int, salt_length: int
) -> bytes:
    """PKCS#8 EncryptedPrivateKeyInfo DER: PBES2, PBKDF2(prf), AES-256-CBC."""
    if prf not in _PRF_HASHES:
        raise ValueError(f"unsupported prf {prf!r}; use one of {sorted(_PRF_HASHES)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError("iterations must be a positive int")
    if iterations > MAX_PBKDF2_ITERATIONS:
        raise ValueError(f"iterations must be at most {MAX_PBKDF2_ITERATIONS}")
    if isinstance(salt_length, bool) or not isinstance(salt_length, int) or salt_length < 8:
        raise ValueError("salt_length must be an int >= 8")

    salt = os.urandom(salt_length)
    iv = os.urandom(16)
    symkey = PBKDF2HMAC(
        algorithm=_PRF_HASHES[prf](), length=32, salt=salt, iterations=iterations
    ).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    plaintext = padder.update(inner_der) + padder.finalize()
    encryptor = Cipher(algorithms.AES(symkey), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()

    kdf_params = {
        "salt": algos.Pbkdf2Salt(name="specified", value=salt),
        "iteration_count": iterations,
    }
    if prf != "sha1":
        # hmacWithSHA1 is the DER DEFAULT and must then be omitted; the others
        # are written explicitly, with NULL parameters as OpenSSL does.
        kdf_params["prf"] = algos.HmacAlgorithm({"algorithm": prf, "parameters": core.Null()})
    epki = keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": algos.EncryptionAlgorithm(
                {
                    "algorithm": "pbes2",
                    "parameters": algos.Pbes2Params(
                        {
                            "key_derivation_func": algos.KdfAlgorithm(
                                {
                                    "algorithm": "pbkdf2",
                                    "parameters": algos.Pbkdf2Params(kdf_params),
                                }
                            ),
                            "encryption_scheme": algos.EncryptionAlgorithm(
                                {"algorithm": "aes256_cbc", "parameters": core.OctetString(iv)}
                            ),
                        }
                    ),
                }
            ),
            "encrypted_data": ciphertext,
        }
    )
    return epki.dump()


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
            _check_header(name, value)
    inner = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = _pbes2_encrypt(
        inner, passphrase, prf=prf, iterations=iterations, salt_length=salt_length
    )
    return _pem_encode(LABEL_ENCRYPTED_PKCS8, der, headers)


def _notary_inner_der(key: PrivateKeyTypes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # notary only parses Ed25519 under its own OID with the 96-byte body
        # public || seed || public; Go's x509 result for OID 1.3.101.112 hits
        # "unsupported key type" in parsePKCS8ToTufKey.
        seed = key.private_bytes_raw()
        public = key.public_key().public_bytes_raw()
        return _OneAsymmetricKey(
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
        _check_header(name, value)
    der = _pbes2_encrypt(
        _notary_inner_der(key),
        passphrase,
        prf="sha1",
        iterations=iterations,
        salt_length=salt_length,
    )
    return _pem_encode(LABEL_ENCRYPTED_PKCS8, der, headers)


def public_key_of(key: PrivateKeyTypes) -> PublicKeyTypes:
    """The public key of a private key object."""
    return key.public_key()
