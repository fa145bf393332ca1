"""YubiKey PIV attestation: prove a key was generated on a YubiKey, and that it is *the* key.

A YubiKey signs an attestation certificate for the key in a slot with its device key, whose
certificate (slot f9) chains to Yubico's attestation roots (bundled in `hsmsign/data`). We check
that chain signature by signature (YubiKey 4 intermediates may lack BasicConstraints and chain
to the older U2F root, which a strict path builder rejects) and then bind the attested public
key to the TUF key ID in the metadata: an attestation of some other key proves nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from hsmsign.errors import HsmsignError
from hsmsign.keys import key_id

# Yubico's PIV attestation extensions (developers.yubico.com/PIV/Introduction/PIV_attestation)
OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")
PIN_POLICIES = {1: "never", 2: "once", 3: "always", 4: "match-once", 5: "match-always"}
TOUCH_POLICIES = {1: "never", 2: "always", 3: "cached"}
FORM_FACTORS = {1: "USB-A keychain", 2: "USB-A nano", 3: "USB-C keychain", 4: "USB-C nano",
                5: "USB-C Lightning", 6: "USB-A biometric", 7: "USB-C biometric"}
MAX_CHAIN = 6


class AttestationError(HsmsignError):
    """The attestation does not prove what it should."""


@dataclass(frozen=True)
class Attestation:
    keyid: str
    serial: int | None
    firmware: str | None
    pin_policy: str | None
    touch_policy: str | None
    form_factor: str | None
    chain: list[str]  # subjects, from the device certificate up to the trusted root

    def to_json(self) -> dict:
        return asdict(self)


def load_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise AttestationError(f"not a certificate ({e})") from None


def yubico_roots() -> list[x509.Certificate]:
    """Yubico's attestation certificates shipped with hsmsign (roots and intermediates)."""
    return load_certificates(files("hsmsign.data").joinpath("yubico-piv-attestation-ca.pem").read_bytes())


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _short(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_oid(oid).value.value
    except x509.ExtensionNotFound:
        return None


def verify_attestation(attestation: bytes, intermediate: bytes, expected_keyid: str, *,
                       extra_trust: list[x509.Certificate] = (), at: datetime | None = None
                       ) -> Attestation:
    """Check the chain attestation <- device certificate <- ... <- a trusted root, and that the
    attested key has `expected_keyid`."""
    slot_cert = load_certificates(attestation)[0]
    device = load_certificates(intermediate)[0]
    trust = [*yubico_roots(), *extra_trust]
    at = at or datetime.now(timezone.utc)

    if not _issued_by(slot_cert, device):
        raise AttestationError("the attestation certificate is not signed by the device certificate "
                               "(slot f9) given; export both from the same YubiKey")
    chain, current = [device], device
    while not any(c.subject == current.subject and c.public_key() == current.public_key()
                  for c in trust if c.subject == c.issuer):
        parent = next((c for c in trust if c.subject == current.issuer and _issued_by(current, c)
                       and c is not current), None)
        if parent is None or len(chain) > MAX_CHAIN:
            raise AttestationError(
                f"the device certificate ({_short(device)}) does not chain to a trusted attestation "
                "root (Yubico's, or one given with --trust-roots)")
        chain.append(parent)
        current = parent
    for cert in (slot_cert, *chain):
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise AttestationError(f"certificate {_short(cert)} is not valid at {at:%Y-%m-%d}")

    attested = key_id(slot_cert.public_key())
    if attested != expected_keyid:
        raise AttestationError(
            f"the attestation is for key {attested[:16]}..., not for {expected_keyid[:16]}...: "
            "it attests a different key")
    firmware = _extension(slot_cert, OID_FIRMWARE)
    serial = _extension(slot_cert, OID_SERIAL)
    policy = _extension(slot_cert, OID_POLICY)
    form = _extension(slot_cert, OID_FORM_FACTOR)
    return Attestation(
        keyid=attested,
        serial=_der_integer(serial) if serial else None,
        firmware=".".join(str(b) for b in firmware[:3]) if firmware else None,
        pin_policy=PIN_POLICIES.get(policy[0], str(policy[0])) if policy else None,
        touch_policy=TOUCH_POLICIES.get(policy[1], str(policy[1])) if policy and len(policy) > 1 else None,
        form_factor=FORM_FACTORS.get(form[0] & 0x7F, str(form[0])) if form else None,
        chain=[_short(c) for c in chain],
    )


def _der_integer(value: bytes) -> int:
    from asn1crypto.core import Integer

    try:
        return int(Integer.load(value).native)
    except ValueError:
        return int.from_bytes(value, "big")


def read_trust_roots(path: Path) -> list[x509.Certificate]:
    try:
        return load_certificates(path.read_bytes())
    except OSError as e:
        raise AttestationError(f"cannot read {path}: {e.strerror}") from None


def attest_key(yubikeys, keyid: str, certificates: tuple[bytes, bytes] | None = None, *,
               extra_trust: list[x509.Certificate] | None = None) -> Attestation:
    """`key attest`: verify that `keyid` was generated on a YubiKey, from the attestation
    `certificates` (slot certificate, device certificate; DER) given, or else read from the
    YubiKey that holds the key (`yubikeys`, a YubiKeyStore), which must then be the one the
    attestation names."""
    serial_read = None
    if certificates is None:
        if keyid not in yubikeys.keyids():
            raise HsmsignError(f"key {keyid[:16]}... is on no YubiKey plugged in; plug it in, or "
                               "give --certificate and --intermediate")
        slot_cert, device_cert, serial_read = yubikeys.attestation(keyid)
    else:
        slot_cert, device_cert = certificates
    return check_attestation(slot_cert, device_cert, keyid, serial_read, extra_trust=extra_trust)


def check_attestation(slot_cert: bytes, device_cert: bytes, keyid: str, serial_read: int | None,
                      *, extra_trust: list[x509.Certificate] | None = None) -> Attestation:
    """`verify_attestation`, and if the certificates were read from YubiKey `serial_read`, that
    the attestation names that YubiKey."""
    result = verify_attestation(slot_cert, device_cert, keyid, extra_trust=extra_trust or [])
    if serial_read is not None and result.serial is not None and result.serial != serial_read:
        raise HsmsignError(f"the attestation names YubiKey {result.serial}, but it was read from "
                           f"YubiKey {serial_read}")
    return result
