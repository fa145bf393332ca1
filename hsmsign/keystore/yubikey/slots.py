"""What the PIV slots of a YubiKey hold: keys, their certificates, policies and TUF key IDs.

A key hsmsign put into a slot has a self-signed certificate whose CN names hsmsign, the role and
the key ID (`CN=hsmsign root 3491e6a1771e7876`), so that ykcs11 and OpenSC list it too. The TUF
key ID comes from the slot's public key: reading needs no PIN. Firmware before 5.3 cannot report
a slot's policies; what hsmsign set is then taken from its record (`record.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hsmsign.errors import HsmsignError
from hsmsign.keys import KeyRecord, algorithm_of, key_id
from hsmsign.keystore.base import StoreKind
from hsmsign.keystore.pcsc import YubiKeyError
from hsmsign.keystore.yubikey.device import Found

STORE = StoreKind.YUBIKEY
DEFAULT_SLOT = "9c"
CN_RE = re.compile(r"^hsmsign (?P<role>\S+) (?P<keyid>[0-9a-f]{16})$")
CERT_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)  # RFC 5280: no expiry
SLOT_NAMES = ["9a", "9c", "9d", "9e", *[f"{s:02x}" for s in range(0x82, 0x96)]]


@dataclass
class SlotInfo:
    slot: str
    key_type: str | None  # e.g. ECCP256; None when the firmware cannot tell (no metadata)
    keyid: str | None
    role: str | None
    pin_policy: str | None
    touch_policy: str | None
    generated: bool | None
    certificate: str | None  # subject of the slot's certificate


@dataclass
class SlotKey:
    """A key in a slot, as the store signs with it."""

    record: KeyRecord
    serial: int
    slot: int
    public_key: Any
    key_type: Any  # yubikit KEY_TYPE
    pin_policy: str | None
    touch_policy: str | None
    generated: bool | None


def certificate_name(role: str, keyid: str):
    """The subject (and issuer) of the self-signed certificate hsmsign writes to a slot."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hsmsign {role} {keyid[:16]}")])


def check_role(role: str) -> None:
    if len(f"hsmsign {role} 0123456789abcdef") > 64:
        raise YubiKeyError(f"role name {role!r} is too long for a YubiKey slot certificate "
                           "(at most 39 characters)")


def _common_name(cert) -> str | None:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _same_public_key(a, b) -> bool:
    try:
        return key_id(a) == key_id(b)
    except HsmsignError:
        return a == b


def read_slots(piv, found: Found, remembered: dict) -> list[tuple[SlotInfo, SlotKey | None]]:
    """Every occupied slot; with the key to sign with where hsmsign knows its algorithm.
    `remembered` is the record of this YubiKey's slots (slot name -> what hsmsign set)."""
    from yubikit.core import BadResponseError, NotSupportedError
    from yubikit.core.smartcard import SW, ApduError
    from yubikit.piv import KEY_TYPE, SLOT

    out = []
    for name in SLOT_NAMES:
        slot = SLOT(int(name, 16))
        metadata = cert = None
        try:
            metadata = piv.get_slot_metadata(slot)
        except NotSupportedError:
            pass
        except ApduError as e:
            if e.sw != SW.REFERENCE_DATA_NOT_FOUND:
                raise
        try:
            cert = piv.get_certificate(slot)
        except (ApduError, BadResponseError):
            pass  # no certificate, or one that does not parse: not hsmsign's
        if metadata is None and cert is None:
            continue
        public = metadata.public_key if metadata is not None else cert.public_key()
        role = None
        if cert is not None:
            match = CN_RE.match(_common_name(cert) or "")
            if match and _same_public_key(cert.public_key(), public):
                role = match.group("role")
        memory = remembered.get(name, {})
        try:
            key_type = metadata.key_type if metadata is not None else KEY_TYPE.from_public_key(public)
        except ValueError:
            key_type = None
        pin_policy = touch_policy = None
        if metadata is not None:
            pin_policy = metadata.pin_policy.name.lower()
            touch_policy = metadata.touch_policy.name.lower()
        keyid = algorithm = None
        try:
            alg = algorithm_of(public)
            keyid = key_id(public)
            algorithm = alg.name
        except HsmsignError:
            alg = None
        if keyid and memory.get("keyid") == keyid:
            role = role or memory.get("role")
            pin_policy = pin_policy or memory.get("pin_policy")
            touch_policy = touch_policy or memory.get("touch_policy")
        info = SlotInfo(slot=name, key_type=key_type.name if key_type is not None else None,
                        keyid=keyid, role=role, pin_policy=pin_policy,
                        touch_policy=touch_policy,
                        generated=metadata.generated if metadata is not None else None,
                        certificate=cert.subject.rfc4514_string() if cert is not None else None)
        key = None
        if alg is not None and key_type is not None:
            record = KeyRecord(keyid=keyid, role=role or "unknown", gun=None, algorithm=algorithm,
                               store=STORE, location=f"YubiKey {found.serial} slot {name}")
            key = SlotKey(record, found.serial, int(slot), public, key_type, pin_policy,
                          touch_policy, info.generated)
        out.append((info, key))
    return out


def occupant(piv, found: Found, slot, remembered: dict) -> SlotInfo | None:
    """What already is in `slot`, if anything (a generated key without metadata or certificate
    is found through its attestation)."""
    occupied = next((info for info, _ in read_slots(piv, found, remembered)
                     if info.slot == f"{int(slot):02x}"), None)
    if occupied is None and found.version < (5, 3, 0) and found.version >= (4, 3, 0):
        from yubikit.core.smartcard import ApduError

        try:  # no metadata and no certificate: a generated key can still be attested
            piv.attest_key(slot)
            occupied = SlotInfo(f"{int(slot):02x}", None, None, None, None, None, True, None)
        except ApduError:
            pass
    return occupied


def learn_policies(piv, key: SlotKey) -> None:
    """Firmware 4.3 - 5.2 reports a slot's policies only in its attestation (when the key
    was generated there)."""
    from cryptography import x509
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import SLOT

    from hsmsign.keystore.attestation import (
        OID_POLICY,
        PIN_POLICIES,
        TOUCH_POLICIES,
    )

    try:
        cert = piv.attest_key(SLOT(key.slot))
        policy = cert.extensions.get_extension_for_oid(OID_POLICY).value.value
    except (ApduError, x509.ExtensionNotFound, ValueError):
        return
    except Exception as e:
        if type(e).__name__ != "NotSupportedError":
            raise
        return
    key.pin_policy = PIN_POLICIES.get(policy[0], key.pin_policy)
    if len(policy) > 1:
        key.touch_policy = TOUCH_POLICIES.get(policy[1], key.touch_policy)


def check_slot_holds(piv, found: Found, key: SlotKey) -> None:
    """Refuse to sign when the slot no longer holds the key it held when it was read."""
    from yubikit.core import NotSupportedError
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import SLOT

    try:
        metadata = piv.get_slot_metadata(SLOT(key.slot))
    except NotSupportedError:
        return  # the signature is checked against the metadata's key after signing
    except ApduError:
        raise YubiKeyError(f"slot {key.slot:02x} of YubiKey {found.serial} is empty; nothing "
                           "was signed") from None
    if metadata.key_type != key.key_type or not _same_public_key(metadata.public_key, key.public_key):
        raise YubiKeyError(f"slot {key.slot:02x} of YubiKey {found.serial} now holds another "
                           f"key ({metadata.key_type.name}) than {key.record.keyid[:7]}; "
                           "nothing was signed")
