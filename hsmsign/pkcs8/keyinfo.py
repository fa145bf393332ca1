"""PKCS#8 PrivateKeyInfo: the key inside, with notary's quirks normalised (EC keys with
version 1, RSA keys without the NULL parameter, Ed25519 under notary's OID with a 96-byte
`public || seed || public` body), and only the keys TUF can use let through."""

from __future__ import annotations

from asn1crypto import core, keys
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hsmsign.pkcs8.errors import KeyFormatError, WrongPassphrase

OID_RSA = "1.2.840.113549.1.1.1"
OID_EC = "1.2.840.10045.2.1"
OID_ED25519 = "1.3.101.112"
# notary's Ed25519 OID (tuf/utils/pkcs8.go: oidPublicKeyED25519).
OID_NOTARY_ED25519 = "1.3.6.1.4.1.11591.15.1"

# asn1crypto curve names of the curves TUF signs with.
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")

_UNSUPPORTED_ALGORITHM_NAMES = {
    "dsa": "DSA",
    "rsassa_pss": "RSASSA-PSS",
    "x25519": "X25519",
    "x448": "X448",
    "ed448": "Ed448",
}


class OneAsymmetricKey(core.Sequence):
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


def load_pkcs8(der: bytes, *, decrypted: bool) -> PrivateKeyTypes:
    """Load a PKCS#8 PrivateKeyInfo, normalising notary's quirks first.

    ``decrypted``: the DER came out of a decryption, so a structure that does
    not parse means the passphrase was wrong.
    """
    try:
        pki = OneAsymmetricKey.load(der, strict=True)
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
    return load_der(normalised, unsupported=f"unsupported {what} private key",
                    corrupt=f"corrupt {what} private key in PKCS#8")


def load_der(der: bytes, *, unsupported: str, corrupt: str) -> PrivateKeyTypes:
    """Unencrypted DER as cryptography reads it, a key TUF can use; else a KeyFormatError
    with the `unsupported` or `corrupt` message."""
    try:
        key = serialization.load_der_private_key(der, password=None)
    except UnsupportedAlgorithm:
        raise KeyFormatError(unsupported) from None
    except (ValueError, TypeError):
        raise KeyFormatError(corrupt) from None
    check_supported(key)
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


def check_supported(key: object) -> None:
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
