"""Key material between cryptography and PKCS#11 objects: a public key object's key, a software
key's attributes for `C_CreateObject`, and a raw ECDSA signature in DER as TUF wants it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsmsign.errors import HsmsignError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

ED25519_OID_DER = bytes.fromhex("06032b6570")


def public_key_from_object(obj) -> PublicKeyTypes:
    """A cryptography public key from a PKCS#11 public key object."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    from pkcs11 import Attribute, KeyType

    key_type = obj.key_type
    if key_type == KeyType.RSA:
        n = int.from_bytes(obj[Attribute.MODULUS], "big")
        e = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if key_type == KeyType.EC:
        from pkcs11.util.ec import encode_ec_public_key

        return load_der_public_key(encode_ec_public_key(obj))
    if key_type == KeyType.EC_EDWARDS:
        point = bytes(obj[Attribute.EC_POINT])
        if len(point) == 34 and point[:2] == b"\x04\x20":  # DER OCTET STRING around the key
            point = point[2:]
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    raise HsmsignError(f"unsupported key type {key_type} on token")


EC_HASH = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}


def der_ecdsa_signature(raw: bytes) -> bytes:
    """DER `SEQUENCE { r INTEGER, s INTEGER }` of a PKCS#11 raw r || s ECDSA signature.

    The same bytes as cryptography's `encode_dss_signature`, without the round trip through
    Python ints and Rust: a few microseconds per signature, ~3% of a SoftHSM P-256 signature
    (bench/bench_pkcs11_sign.py).
    """
    half = len(raw) // 2
    r = raw[:half].lstrip(b"\x00") or b"\x00"
    s = raw[half:].lstrip(b"\x00") or b"\x00"
    if r[0] & 0x80:
        r = b"\x00" + r
    if s[0] & 0x80:
        s = b"\x00" + s
    body = b"\x02" + der_length(len(r)) + r + b"\x02" + der_length(len(s)) + s
    return b"\x30" + der_length(len(body)) + body


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def token_attributes(key) -> tuple[Any, dict, dict]:
    """PKCS#11 key type, public and private attributes for a software private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        params = encode_named_curve_parameters(key.curve.name)
        return (KeyType.EC,
                {Attribute.EC_PARAMS: params, Attribute.EC_POINT: der_octet_string(point)},
                {Attribute.EC_PARAMS: params,
                 Attribute.VALUE: key.private_numbers().private_value.to_bytes(size, "big")})
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw_public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        return (KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: ED25519_OID_DER,
                 Attribute.EC_POINT: der_octet_string(raw_public)},
                {Attribute.EC_PARAMS: ED25519_OID_DER, Attribute.VALUE: seed})
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        big = big_endian
        return (KeyType.RSA,
                {Attribute.MODULUS: big(n.public_numbers.n),
                 Attribute.PUBLIC_EXPONENT: big(n.public_numbers.e)},
                {Attribute.MODULUS: big(n.public_numbers.n),
                 Attribute.PUBLIC_EXPONENT: big(n.public_numbers.e),
                 Attribute.PRIVATE_EXPONENT: big(n.d), Attribute.PRIME_1: big(n.p),
                 Attribute.PRIME_2: big(n.q), Attribute.EXPONENT_1: big(n.dmp1),
                 Attribute.EXPONENT_2: big(n.dmq1), Attribute.COEFFICIENT: big(n.iqmp)})
    raise HsmsignError(f"cannot put a {type(key).__name__} on a token")


def big_endian(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def der_octet_string(value: bytes) -> bytes:
    from asn1crypto.core import OctetString

    return OctetString(value).dump()
