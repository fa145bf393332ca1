"""The key model: algorithms, TUF key IDs, and public key <-> TUF `Key`.

A key has one ID wherever it lives: the TUF 1.0 key ID that securesystemslib computes
(hex SHA-256 of the canonical JSON of the public key with its scheme).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from hsmsign.errors import HsmsignError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )
    from securesystemslib.signer import SSlibKey

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = TOP_LEVEL_ROLES[1:]  # the top-level roles whose keys sign without a ceremony
DEFAULT_ALGORITHM = "ecdsa-p256"
KEYID_PREFIX_MIN = 7


@dataclass(frozen=True)
class Algorithm:
    """One signing algorithm hsmsign offers, and how TUF names it."""

    name: str  # hsmsign's name, as typed on the command line
    keytype: str  # TUF keytype
    scheme: str  # TUF signature scheme
    curve: str | None = None  # EC curve name as cryptography/PKCS#11 know it
    bits: int | None = None  # RSA modulus size


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("ecdsa-p256", "ecdsa", "ecdsa-sha2-nistp256", curve="secp256r1"),
        Algorithm("ecdsa-p384", "ecdsa", "ecdsa-sha2-nistp384", curve="secp384r1"),
        Algorithm("ed25519", "ed25519", "ed25519"),
        Algorithm("rsa-3072", "rsa", "rsassa-pss-sha256", bits=3072),
    )
}


def algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise HsmsignError(
            f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}"
        ) from None


def algorithm_of(public_key: PublicKeyTypes) -> Algorithm:
    """The hsmsign algorithm of a public key; an error for keys TUF cannot use."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for a in ALGORITHMS.values():
            if a.curve == public_key.curve.name:
                return a
        if public_key.curve.name == "secp521r1":
            return Algorithm("ecdsa-p521", "ecdsa", "ecdsa-sha2-nistp521", curve="secp521r1")
        raise HsmsignError(
            f"unsupported key: EC curve {public_key.curve.name} has no TUF signature scheme; "
            "use a P-256, P-384 or P-521 key"
        )
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ALGORITHMS["ed25519"]
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise HsmsignError(
                f"unsupported key: RSA-{public_key.key_size} is too small; use 2048 bits or more"
            )
        return Algorithm(f"rsa-{public_key.key_size}", "rsa", "rsassa-pss-sha256",
                         bits=public_key.key_size)
    raise HsmsignError(f"unsupported key type {type(public_key).__name__}")


def generate_private_key(alg: Algorithm) -> PrivateKeyTypes:
    """A new software key (for the file store and for `--import-from-file` routes)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if alg.keytype == "ecdsa":
        curves = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1}
        return ec.generate_private_key(curves[alg.curve]())  # type: ignore[index]
    if alg.keytype == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if alg.keytype == "rsa":
        return rsa.generate_private_key(65537, alg.bits or 3072)
    raise HsmsignError(f"cannot generate {alg.name} keys")


def tuf_key(public_key: PublicKeyTypes) -> SSlibKey:
    """The TUF public key (with its key ID) for a cryptography public key."""
    from securesystemslib.signer import SSlibKey

    alg = algorithm_of(public_key)
    return SSlibKey.from_crypto(public_key, scheme=alg.scheme)


def key_id(public_key: PublicKeyTypes) -> str:
    return tuf_key(public_key).keyid


def public_key_pem(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(data: bytes) -> PublicKeyTypes:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_public_key(data)
    except ValueError as e:
        raise HsmsignError(f"not a PEM public key ({e})") from None


def notary_key_id(public_key: PublicKeyTypes) -> str:
    """notary's own key ID (its file names, the `path:` header): sha256 of the canonical JSON
    `{"keytype": T, "keyval": {"private": null, "public": base64(public bytes)}}`."""
    import base64
    import hashlib
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if isinstance(public_key, ed25519.Ed25519PublicKey):
        keytype = "ed25519"
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        keytype = "rsa" if isinstance(public_key, rsa.RSAPublicKey) else "ecdsa"
        raw = public_key.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    doc = {"keytype": keytype, "keyval": {"private": None, "public": base64.b64encode(raw).decode()}}
    return hashlib.sha256(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def load_public_key_file(path) -> PublicKeyTypes:
    """A public key from a PEM file: SubjectPublicKeyInfo (docker's `NAME.pub`, with or without
    its `role:` header), or an X.509 certificate (notary's root certificates)."""
    from cryptography import x509

    data = open(path, "rb").read()
    # PEM headers ("role: alice") are not part of the key: drop them.
    lines = [line for line in data.splitlines() if b": " not in line]
    data = b"\n".join(lines) + b"\n"
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificate(data).public_key()
        except ValueError as e:
            raise HsmsignError(f"{path}: not a PEM certificate ({e})") from None
    try:
        return load_public_key_pem(data)
    except HsmsignError:
        raise HsmsignError(f"{path} is not a PEM public key or certificate") from None


def is_top_level(role: str) -> bool:
    return role in TOP_LEVEL_ROLES


_ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def normalize_role(role: str) -> str:
    """TUF role name for a role as DCT/notary write it (`targets/releases` -> `releases`)."""
    role = role.strip()
    if role.startswith("targets/"):
        role = role[len("targets/"):]
    if not _ROLE_RE.match(role):
        raise HsmsignError(
            f"invalid role name {role!r}: use letters, digits, '.', '_' and '-'"
        )
    return role


@dataclass(frozen=True)
class KeyRecord:
    """What hsmsign knows about a key without touching its secret."""

    keyid: str
    role: str
    gun: str | None
    algorithm: str
    store: str  # a keystore.base.StoreKind ("file", "token", "yubikey"), a str like its value
    location: str  # file path, or "<token label> (serial ...)"

    def to_json(self) -> dict:
        return asdict(self)
