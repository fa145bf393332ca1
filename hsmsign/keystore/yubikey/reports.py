"""Reading a YubiKey without changing it: its state for `token list` and a key's attestation
certificates for `key attest`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from hsmsign.keystore.pcsc import YubiKeyError, pid_for
from hsmsign.keystore.yubikey.auth import factory_defaults
from hsmsign.keystore.yubikey.device import open_card, version_text
from hsmsign.keystore.yubikey.slots import STORE, SlotInfo

if TYPE_CHECKING:
    from hsmsign.keystore.yubikey.store import YubiKeyStore


@dataclass
class YubiKeyInfo:
    serial: int
    firmware: str
    form_factor: str
    reader: str
    pin_tries: int | None
    pin_tries_total: int | None
    puk_tries: int | None
    factory_defaults: list[str]
    slots: list[SlotInfo] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        data["kind"] = STORE
        data["label"] = f"YubiKey {self.serial}"
        return data


def info(store: YubiKeyStore) -> list[YubiKeyInfo]:
    """What `token list` shows: every YubiKey (or `--serial`'s), its PIN state and slots."""
    from yubikit.core import NotSupportedError
    from yubikit.support import read_info

    infos = []
    for found in store.devices.candidates():
        with open_card(found.device, found.serial) as conn:
            try:
                device_info = read_info(conn, pid_for(found.device.name))
                form_factor = str(device_info.form_factor)
            except Exception:
                form_factor = "unknown"
        with store.session(found, "reading its state") as piv:
            total = puk = None
            try:
                pin_metadata = piv.get_pin_metadata()
                tries, total = pin_metadata.attempts_remaining, pin_metadata.total_attempts
                puk = piv.get_puk_metadata().attempts_remaining
            except NotSupportedError:
                tries = piv.get_pin_attempts()
            slots = [info for info, _ in store._read_slots(piv, found)]
            infos.append(YubiKeyInfo(
                serial=found.serial, firmware=version_text(found.version),
                form_factor=form_factor, reader=found.device.name, pin_tries=tries,
                pin_tries_total=total, puk_tries=puk,
                factory_defaults=factory_defaults(piv), slots=slots))
    return infos


def attestation(store: YubiKeyStore, keyid: str) -> tuple[bytes, bytes, int]:
    """(the slot's attestation certificate, the device's f9 certificate, serial), DER."""
    from cryptography.hazmat.primitives.serialization import Encoding
    from yubikit.core import NotSupportedError
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import SLOT

    key = store._get(keyid)
    found = store._found_for(key)
    with store.session(found, "attesting a key") as piv:
        try:
            attested = piv.attest_key(SLOT(key.slot))
        except NotSupportedError:
            raise YubiKeyError(f"YubiKey {found.serial} (firmware "
                               f"{version_text(found.version)}) cannot attest keys; "
                               "attestation needs firmware 4.3 or later") from None
        except ApduError:
            raise YubiKeyError(f"YubiKey {found.serial} will not attest the key in slot "
                               f"{key.slot:02x}: it was imported, not generated on the "
                               "device, and only generated keys can be attested") from None
        device = piv.get_certificate(SLOT.ATTESTATION)
    return attested.public_bytes(Encoding.DER), device.public_bytes(Encoding.DER), found.serial
