"""A YubiKey PIV card emulator for the tests: it speaks the real APDU layer, nothing above it.

`PivCard` is the card: ISO 7816-4 APDUs in (short or extended, command chaining), responses out
(response chaining with 61xx / GET RESPONSE), and behind them the PIV application with the
YubiKey extensions that yubikit, ykman, yubico-piv-tool and ykcs11 use:

    SELECT, GET VERSION (FD), GET SERIAL (F8), GET DATA (CB), PUT DATA (DB), GET METADATA (F7),
    VERIFY (20), CHANGE REFERENCE (24), RESET RETRY COUNTER (2C), GENERAL AUTHENTICATE (87:
    management-key mutual authentication, ECDSA/RSA/Ed25519 private key operations),
    GENERATE ASYMMETRIC (47, with PIN/touch policy bytes), IMPORT KEY (FE), ATTEST (F9),
    SET MANAGEMENT KEY (FF), RESET (FB), SET PIN RETRIES (FA), MOVE KEY (F6, 5.7: delete)

plus the two small applications a YubiKey answers beside PIV: the management application (READ
CONFIG, for `ykman`'s device info) and the OTP application (the serial of a YubiKey 4, as
yubico-piv-tool reads it). Firmware differences are modelled where hsmsign depends on them: no
metadata before 5.3, no GET SERIAL before 5.0, attestation from 4.3, cached touch from 4.3, AES
management keys from 5.4, Ed25519 and RSA-3072 from 5.7.

The card is used two ways:

- in process: `EmulatorConnection(card)` is a `yubikit.core.smartcard.SmartCardConnection`;
- behind real pcscd: `VpcdCard(card, port)` connects to vsmartcard's vpcd driver the way a
  virtual ICC does (2-byte big-endian length, then the payload; 1-byte payloads are control
  codes: power off 0, power on 1, reset 2, ATR request 4).

Touch is simulated: `card.touch_mode = "auto"` touches at once (and counts it), "never" lets the
touch time out after `card.touch_timeout` seconds, which the card answers with 6982 as a YubiKey
does. `card.pull_when(predicate)` pulls the card out when an APDU matching the predicate arrives.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

PIV_AID = bytes.fromhex("a000000308")
MGMT_AID = bytes.fromhex("a000000527471117")
OTP_AID = bytes.fromhex("a0000005272001")

ATR_YK5 = bytes.fromhex("3bfd1300008131fe158073c021c057597562694b657940")
ATR_YK4 = bytes.fromhex("3bf81300008131fe15597562696b657934d4")

# Status words
OK = 0x9000
WRONG_LENGTH = 0x6700
SECURITY_NOT_SATISFIED = 0x6982
AUTH_BLOCKED = 0x6983
CONDITIONS_NOT_SATISFIED = 0x6985
INCORRECT_PARAMETERS = 0x6A80
FILE_NOT_FOUND = 0x6A82
REFERENCE_NOT_FOUND = 0x6A88
WRONG_P1P2 = 0x6B00
INS_NOT_SUPPORTED = 0x6D00
CLA_NOT_SUPPORTED = 0x6E00

# Key types (PIV algorithm identifiers)
TDES, AES128, AES192, AES256 = 0x03, 0x08, 0x0A, 0x0C
RSA1024, RSA2048, RSA3072, RSA4096 = 0x06, 0x07, 0x05, 0x16
ECCP256, ECCP384, ED25519 = 0x11, 0x14, 0xE0
MGMT_KEY_LENGTHS = {TDES: 24, AES128: 16, AES192: 24, AES256: 32}
RSA_BITS = {RSA1024: 1024, RSA2048: 2048, RSA3072: 3072, RSA4096: 4096}
EC_CURVES = {ECCP256: ec.SECP256R1, ECCP384: ec.SECP384R1}

# Policies
PIN_NEVER, PIN_ONCE, PIN_ALWAYS = 1, 2, 3
TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED = 1, 2, 3
TOUCH_CACHE_SECONDS = 15

SLOT_MANAGEMENT = 0x9B
KEY_SLOTS = {0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)}
DEFAULT_PIN_POLICY = {0x9A: PIN_ONCE, 0x9C: PIN_ALWAYS, 0x9D: PIN_ONCE, 0x9E: PIN_NEVER}
SLOT_OBJECTS = {0x9A: 0x5FC105, 0x9C: 0x5FC10A, 0x9D: 0x5FC10B, 0x9E: 0x5FC101,
                **{0x82 + i: 0x5FC10D + i for i in range(20)}, 0xF9: 0x5FFF01}
OBJECT_PRINTED = 0x5FC109  # readable only after VERIFY (ykman keeps the protected key here)
OBJECT_ATTESTATION = 0x5FFF01

DEFAULT_PIN = b"123456"
DEFAULT_PUK = b"12345678"
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")

# Yubico's attestation extensions
OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")


class ApduStatus(Exception):
    def __init__(self, sw: int):
        self.sw = sw


class CardRemoved(Exception):
    """The card was pulled out (in process: the reader lost it)."""


# -- BER-TLV ----------------------------------------------------------------------------------


def tlv(tag: int, value: bytes = b"") -> bytes:
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big") if tag <= 0xFFFF else tag.to_bytes(3, "big")
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n <= 0xFF:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82]) + n.to_bytes(2, "big")
    return tag_bytes + length + value


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:  # multi-byte tag
            tag = (tag << 8) | data[i]
            i += 1
            while data[i - 1] & 0x80:
                tag = (tag << 8) | data[i]
                i += 1
        n = data[i]
        i += 1
        if n == 0x81:
            n, i = data[i], i + 1
        elif n == 0x82:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n > 0x82:
            raise ApduStatus(INCORRECT_PARAMETERS)
        if i + n > len(data):
            raise ApduStatus(INCORRECT_PARAMETERS)
        out.append((tag, data[i:i + n]))
        i += n
    return out


def tlv_dict(data: bytes) -> dict[int, bytes]:
    return dict(parse_tlvs(data))


# -- the attestation identity of a device (slot f9) --------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class AttestationCA:
    """A test root standing in for Yubico's attestation root (RSA, like Yubico's)."""

    key: Any
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str = "Test PIV Root CA") -> AttestationCA:
        key = rsa.generate_private_key(65537, 2048)
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def device_identity(self, serial: int, *, yubikey4: bool = False) -> tuple[Any, x509.Certificate]:
        """The key and certificate a YubiKey keeps in slot f9. A YubiKey 4's has no
        BasicConstraints at all; a YubiKey 5's says CA:TRUE."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(_name("Yubico PIV Attestation"))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(serial or x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=3650)))
        if not yubikey4:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                            critical=True)
        return key, builder.sign(self.key, hashes.SHA256())


# -- the card ---------------------------------------------------------------------------------


@dataclass
class SlotKey:
    private: Any
    key_type: int
    pin_policy: int
    touch_policy: int
    generated: bool


def _pad_pin(value: bytes) -> bytes:
    return value.ljust(8, b"\xff")


@dataclass
class Counter:
    value: bytes
    default: bytes
    total: int = 3
    remaining: int = 3

    def check(self, candidate: bytes) -> int:
        """SW for trying `candidate` (8 bytes, 0xFF padded); spends a try when wrong."""
        if self.remaining == 0:
            return AUTH_BLOCKED
        if candidate == _pad_pin(self.value):
            self.remaining = self.total
            return OK
        self.remaining -= 1
        return AUTH_BLOCKED if self.remaining == 0 else 0x63C0 | self.remaining

    @property
    def is_default(self) -> bool:
        return self.value == self.default


@dataclass
class Log:
    """What the card saw, for assertions: instruction bytes in order."""

    instructions: list[int] = field(default_factory=list)

    def count(self, ins: int) -> int:
        return self.instructions.count(ins)


class PivCard:
    def __init__(self, *, serial: int = 12345678, version: tuple[int, int, int] = (5, 4, 3),
                 form_factor: int = 0x03, ca: AttestationCA | None = None,
                 touch_mode: str = "auto", touch_timeout: float = 0.3):
        self.serial = serial
        self.version = version
        self.form_factor = form_factor
        self.yubikey4 = version < (5, 0, 0)
        self.atr = ATR_YK4 if self.yubikey4 else ATR_YK5
        self.touch_mode = touch_mode
        self.touch_timeout = touch_timeout
        self.touches = 0
        self.log = Log()
        self.removed = False
        self._pull: Callable[[bytes], bool] | None = None
        self._lock = threading.RLock()
        self._last_touch = -1e9  # the touch cache is the key's, not the connection's
        ca = ca or AttestationCA.create()
        self.attestation_key, self.attestation_cert = ca.device_identity(serial, yubikey4=self.yubikey4)
        self._factory_reset()
        self._power_cycle()

    # -- factory state ------------------------------------------------------------------------

    def _factory_reset(self) -> None:
        self.pin = Counter(DEFAULT_PIN, DEFAULT_PIN)
        self.puk = Counter(DEFAULT_PUK, DEFAULT_PUK)
        self.mgmt_type = AES192 if self.version >= (5, 7, 0) else TDES
        self.mgmt_key = DEFAULT_MANAGEMENT_KEY
        self.mgmt_touch = TOUCH_NEVER
        self.keys: dict[int, SlotKey] = {}
        # The device attestation key and certificate survive a PIV reset.
        self.objects: dict[int, bytes] = {
            OBJECT_ATTESTATION: tlv(0x53, tlv(0x70, self.attestation_cert.public_bytes(
                serialization.Encoding.DER)) + tlv(0x71, b"\x00") + tlv(0xFE))}

    @property
    def mgmt_key_is_default(self) -> bool:
        return self.mgmt_key == DEFAULT_MANAGEMENT_KEY

    def _power_cycle(self) -> None:
        self.selected: str | None = None
        self.pin_verified = False
        self.pin_fresh = False  # verified since the last private key operation (PIN ALWAYS)
        self.mgmt_authenticated = False
        self._witness: bytes | None = None
        self._chain = b""  # command chaining buffer
        self._pending = b""  # response chaining buffer

    def power_on(self) -> None:
        with self._lock:
            self._power_cycle()

    def power_off(self) -> None:
        with self._lock:
            self._power_cycle()

    def reset(self) -> None:
        with self._lock:
            self._power_cycle()

    def pull_when(self, predicate: Callable[[bytes], bool] | None) -> None:
        """Pull the card out when an APDU matching `predicate` arrives (it is not answered)."""
        self._pull = predicate

    def should_pull(self, apdu: bytes) -> bool:
        return self._pull is not None and self._pull(apdu)

    # -- APDU layer ---------------------------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        """One command APDU in, one response APDU (data + SW1 SW2) out."""
        with self._lock:
            if self.removed:
                raise CardRemoved()
            try:
                data, sw = self._transmit(apdu)
            except ApduStatus as e:
                data, sw = b"", e.sw
            return data + sw.to_bytes(2, "big")

    def _transmit(self, apdu: bytes) -> tuple[bytes, int]:
        if len(apdu) < 4:
            raise ApduStatus(WRONG_LENGTH)
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        data, le, extended = b"", 0, False
        if len(body) == 1:
            le = body[0] or 256
        elif len(body) == 3 and body[0] == 0:
            le, extended = int.from_bytes(body[1:], "big") or 65536, True
        elif body:
            if body[0] == 0 and len(body) >= 3:
                extended = True
                n = int.from_bytes(body[1:3], "big")
                data, rest = body[3:3 + n], body[3 + n:]
                if len(data) != n or len(rest) not in (0, 2):
                    raise ApduStatus(WRONG_LENGTH)
                le = (int.from_bytes(rest, "big") or 65536) if rest else 0
            else:
                n = body[0]
                data, rest = body[1:1 + n], body[1 + n:]
                if len(data) != n or len(rest) not in (0, 1):
                    raise ApduStatus(WRONG_LENGTH)
                le = (rest[0] or 256) if rest else 0
        if ins == 0xC0:  # GET RESPONSE
            return self._next_chunk(le or 256)
        self._pending = b""
        if cla & 0x10:  # command chaining: more to come
            self._chain += data
            return b"", OK
        data, self._chain = self._chain + data, b""
        if cla & ~0x10 not in (0x00,):
            raise ApduStatus(CLA_NOT_SUPPORTED)
        self.log.instructions.append(ins)
        self._pending = self._dispatch(ins, p1, p2, data)
        return self._next_chunk(65536 if extended else 256)

    def _next_chunk(self, size: int) -> tuple[bytes, int]:
        chunk, self._pending = self._pending[:size], self._pending[size:]
        if self._pending:
            return chunk, 0x6100 | min(len(self._pending), 0xFF)
        return chunk, OK

    def _dispatch(self, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        if ins == 0xA4:
            return self._select(p1, data)
        if self.selected == "piv":
            handler = self._PIV.get(ins)
        elif self.selected == "mgmt":
            handler = self._MGMT.get(ins)
        elif self.selected == "otp":
            handler = self._OTP.get(ins)
        else:
            handler = None
        if handler is None:
            raise ApduStatus(INS_NOT_SUPPORTED)
        return handler(self, p1, p2, data) or b""

    def _select(self, p1: int, aid: bytes) -> bytes:
        if p1 != 0x04:
            raise ApduStatus(WRONG_P1P2)
        if aid[:5] == PIV_AID:
            if self.selected != "piv":
                self.pin_verified = self.pin_fresh = self.mgmt_authenticated = False
            self.selected = "piv"
            return tlv(0x61, tlv(0x4F, bytes.fromhex("000010000100"))
                       + tlv(0x79, tlv(0x4F, PIV_AID)))
        if aid == MGMT_AID and self.version >= (4, 1, 0):
            self._leave_piv()
            self.selected = "mgmt"
            return ("Virtual mgr - FW version %d.%d.%d" % self.version).encode()
        if aid[:7] == OTP_AID:
            self._leave_piv()
            self.selected = "otp"
            return bytes(self.version) + bytes([1, 0x05, 0x00])
        raise ApduStatus(FILE_NOT_FOUND)

    def _leave_piv(self) -> None:
        self.pin_verified = self.pin_fresh = self.mgmt_authenticated = False

    # -- management and OTP applications ----------------------------------------------------

    def _read_config(self, p1, p2, data):
        usb = 0x003B if self.yubikey4 else 0x023B  # OTP|U2F|OPENPGP|PIV|OATH (|FIDO2 on a YK5)
        tlvs = (tlv(0x01, usb.to_bytes(2, "big")) + tlv(0x02, self.serial.to_bytes(4, "big"))
                + tlv(0x04, bytes([0 if self.yubikey4 else self.form_factor]))
                + tlv(0x05, bytes(self.version)) + tlv(0x0A, b"\x00"))
        if not self.yubikey4:
            tlvs += tlv(0x03, usb.to_bytes(2, "big"))
        return bytes([len(tlvs)]) + tlvs

    def _otp_serial(self, p1, p2, data):
        if p1 != 0x10:
            raise ApduStatus(WRONG_P1P2)
        return self.serial.to_bytes(4, "big")

    _MGMT = {0x1D: _read_config}
    _OTP = {0x01: _otp_serial}

    # -- PIV: information -------------------------------------------------------------------

    def _get_version(self, p1, p2, data):
        return bytes(self.version)

    def _get_serial(self, p1, p2, data):
        if self.version < (5, 0, 0):
            raise ApduStatus(INS_NOT_SUPPORTED)
        return self.serial.to_bytes(4, "big")

    def _get_metadata(self, p1, p2, data):
        if self.version < (5, 3, 0):
            raise ApduStatus(INS_NOT_SUPPORTED)
        if p2 in (0x80, 0x81):
            counter = self.pin if p2 == 0x80 else self.puk
            return (tlv(0x01, b"\xff") + tlv(0x02, bytes([0, 0]))
                    + tlv(0x05, bytes([1 if counter.is_default else 0]))
                    + tlv(0x06, bytes([counter.total, counter.remaining])))
        if p2 == SLOT_MANAGEMENT:
            return (tlv(0x01, bytes([self.mgmt_type])) + tlv(0x02, bytes([0, self.mgmt_touch]))
                    + tlv(0x05, bytes([1 if self.mgmt_key_is_default else 0])))
        if p2 == 0xF9:
            key = SlotKey(self.attestation_key, ECCP256, PIN_NEVER, TOUCH_NEVER, True)
        elif p2 in KEY_SLOTS:
            key = self.keys.get(p2)
        else:  # e.g. 96, the fingerprint reference of a YubiKey Bio
            raise ApduStatus(REFERENCE_NOT_FOUND)
        if key is None:
            raise ApduStatus(REFERENCE_NOT_FOUND)
        return (tlv(0x01, bytes([key.key_type])) + tlv(0x02, bytes([key.pin_policy, key.touch_policy]))
                + tlv(0x03, bytes([1 if key.generated else 2]))
                + tlv(0x04, _public_key_tlvs(key.key_type, key.private.public_key())))

    # -- PIV: data objects --------------------------------------------------------------------

    def _get_data(self, p1, p2, data):
        if (p1, p2) != (0x3F, 0xFF):
            raise ApduStatus(WRONG_P1P2)
        fields = tlv_dict(data)
        if 0x5C not in fields:
            raise ApduStatus(INCORRECT_PARAMETERS)
        object_id = int.from_bytes(fields[0x5C], "big")
        if object_id == 0x7E:  # discovery object
            return tlv(0x7E, tlv(0x4F, PIV_AID + bytes.fromhex("000010000100")) + tlv(0x5F2F, b"\x40\x00"))
        if object_id == OBJECT_PRINTED and not self.pin_verified:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if object_id not in self.objects:
            raise ApduStatus(FILE_NOT_FOUND)
        return self.objects[object_id]

    def _put_data(self, p1, p2, data):
        if (p1, p2) != (0x3F, 0xFF):
            raise ApduStatus(WRONG_P1P2)
        if not self.mgmt_authenticated:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        items = parse_tlvs(data)
        if len(items) != 2 or items[0][0] != 0x5C or items[1][0] != 0x53:
            raise ApduStatus(INCORRECT_PARAMETERS)
        object_id = int.from_bytes(items[0][1], "big")
        if object_id == OBJECT_ATTESTATION:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if items[1][1]:
            self.objects[object_id] = tlv(0x53, items[1][1])
        else:
            self.objects.pop(object_id, None)

    # -- PIV: PIN and PUK ---------------------------------------------------------------------

    def _verify(self, p1, p2, data):
        if p2 != 0x80:
            raise ApduStatus(REFERENCE_NOT_FOUND)
        if p1 == 0xFF:  # reset the verification state
            self.pin_verified = self.pin_fresh = False
            return
        if not data:  # how many tries are left, spending none
            if self.pin.remaining == 0:
                raise ApduStatus(AUTH_BLOCKED)
            if self.pin_verified:
                return
            raise ApduStatus(0x63C0 | min(self.pin.remaining, 15))
        if len(data) != 8:
            raise ApduStatus(WRONG_LENGTH)
        sw = self.pin.check(data)
        if sw != OK:
            self.pin_verified = self.pin_fresh = False
            raise ApduStatus(sw)
        self.pin_verified = self.pin_fresh = True

    def _change_reference(self, p1, p2, data):
        if p2 not in (0x80, 0x81):
            raise ApduStatus(REFERENCE_NOT_FOUND)
        if len(data) != 16:
            raise ApduStatus(WRONG_LENGTH)
        counter = self.pin if p2 == 0x80 else self.puk
        sw = counter.check(data[:8])
        if sw != OK:
            raise ApduStatus(sw)
        new = _unpad(data[8:])
        if not 6 <= len(new) <= 8:
            raise ApduStatus(INCORRECT_PARAMETERS)
        counter.value = new

    def _reset_retry(self, p1, p2, data):
        if p2 != 0x80:
            raise ApduStatus(REFERENCE_NOT_FOUND)
        if len(data) != 16:
            raise ApduStatus(WRONG_LENGTH)
        sw = self.puk.check(data[:8])
        if sw != OK:
            raise ApduStatus(sw)
        self.pin.value = _unpad(data[8:])
        self.pin.remaining = self.pin.total

    def _set_pin_retries(self, p1, p2, data):
        if not (self.mgmt_authenticated and self.pin_verified):
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if not (1 <= p1 <= 255 and 1 <= p2 <= 255):
            raise ApduStatus(WRONG_P1P2)
        self.pin = Counter(DEFAULT_PIN, DEFAULT_PIN, p1, p1)
        self.puk = Counter(DEFAULT_PUK, DEFAULT_PUK, p2, p2)

    # -- PIV: management key, keys ------------------------------------------------------------

    def _mgmt_cipher(self):
        if self.mgmt_type == TDES:
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

            return Cipher(TripleDES(self.mgmt_key), modes.ECB())
        return Cipher(algorithms.AES(self.mgmt_key), modes.ECB())

    def _authenticate_management(self, p1, data) -> bytes:
        if p1 != self.mgmt_type:
            raise ApduStatus(INCORRECT_PARAMETERS)
        fields = tlv_dict(tlv_dict(data).get(0x7C, b""))
        block = 8 if self.mgmt_type == TDES else 16
        if 0x80 in fields and not fields[0x80]:  # step 1: the card's witness, encrypted
            self._witness = os.urandom(block)
            enc = self._mgmt_cipher().encryptor()
            return tlv(0x7C, tlv(0x80, enc.update(self._witness) + enc.finalize()))
        if 0x80 in fields and 0x81 in fields:  # step 2: witness decrypted + host challenge
            witness, self._witness = self._witness, None
            if witness is None or fields[0x80] != witness or len(fields[0x81]) != block:
                self.mgmt_authenticated = False
                raise ApduStatus(SECURITY_NOT_SATISFIED)
            enc = self._mgmt_cipher().encryptor()
            self.mgmt_authenticated = True
            return tlv(0x7C, tlv(0x82, enc.update(fields[0x81]) + enc.finalize()))
        raise ApduStatus(INCORRECT_PARAMETERS)

    def _general_authenticate(self, p1, p2, data):
        if p2 == SLOT_MANAGEMENT:
            return self._authenticate_management(p1, data)
        if p2 not in KEY_SLOTS and p2 != 0xF9:
            raise ApduStatus(WRONG_P1P2)
        key = self.keys.get(p2)
        if key is None or key.key_type != p1:
            raise ApduStatus(INCORRECT_PARAMETERS)
        fields = tlv_dict(tlv_dict(data).get(0x7C, b""))
        if 0x82 not in fields or (0x81 not in fields and 0x85 not in fields):
            raise ApduStatus(INCORRECT_PARAMETERS)
        if key.pin_policy == PIN_ONCE and not self.pin_verified:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if key.pin_policy == PIN_ALWAYS and not self.pin_fresh:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        self.pin_fresh = False
        if not self._touched(key.touch_policy):
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if 0x85 in fields:  # ECDH
            peer = ec.EllipticCurvePublicKey.from_encoded_point(EC_CURVES[p1](), fields[0x85])
            return tlv(0x7C, tlv(0x82, key.private.exchange(ec.ECDH(), peer)))
        return tlv(0x7C, tlv(0x82, _private_operation(key, fields[0x81])))

    def _touched(self, policy: int) -> bool:
        if policy == TOUCH_NEVER:
            return True
        now = time.monotonic()
        if policy == TOUCH_CACHED and now - self._last_touch < TOUCH_CACHE_SECONDS:
            return True
        if self.touch_mode == "auto":
            self.touches += 1
            self._last_touch = now
            return True
        time.sleep(self.touch_timeout)  # the key blinks; nobody touches it
        return False

    def _check_policies(self, key_type: int, pin_policy: int, touch_policy: int) -> None:
        if key_type in (RSA3072, RSA4096, ED25519) and self.version < (5, 7, 0):
            raise ApduStatus(INCORRECT_PARAMETERS)
        if key_type not in (*RSA_BITS, *EC_CURVES, ED25519):
            raise ApduStatus(INCORRECT_PARAMETERS)
        if pin_policy not in (0, PIN_NEVER, PIN_ONCE, PIN_ALWAYS):
            raise ApduStatus(INCORRECT_PARAMETERS)
        if touch_policy not in (0, TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED):
            raise ApduStatus(INCORRECT_PARAMETERS)
        if touch_policy == TOUCH_CACHED and self.version < (4, 3, 0):
            raise ApduStatus(INCORRECT_PARAMETERS)

    def _store_key(self, slot: int, private, key_type: int, pin_policy: int, touch_policy: int,
                   generated: bool) -> SlotKey:
        key = SlotKey(private, key_type, pin_policy or DEFAULT_PIN_POLICY.get(slot, PIN_ONCE),
                      touch_policy or TOUCH_NEVER, generated)
        self.keys[slot] = key
        return key

    def _generate(self, p1, p2, data):
        if not self.mgmt_authenticated:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if p2 not in KEY_SLOTS:
            raise ApduStatus(WRONG_P1P2)
        fields = tlv_dict(tlv_dict(data).get(0xAC, b""))
        if 0x80 not in fields:
            raise ApduStatus(INCORRECT_PARAMETERS)
        key_type = fields[0x80][0]
        pin_policy = fields.get(0xAA, b"\x00")[0]
        touch_policy = fields.get(0xAB, b"\x00")[0]
        self._check_policies(key_type, pin_policy, touch_policy)
        if key_type in RSA_BITS:
            private = rsa.generate_private_key(65537, RSA_BITS[key_type])
        elif key_type == ED25519:
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            private = ec.generate_private_key(EC_CURVES[key_type]())
        key = self._store_key(p2, private, key_type, pin_policy, touch_policy, True)
        return tlv(0x7F49, _public_key_tlvs(key_type, key.private.public_key()))

    def _import_key(self, p1, p2, data):
        if not self.mgmt_authenticated:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if p2 not in KEY_SLOTS:
            raise ApduStatus(WRONG_P1P2)
        fields = tlv_dict(data)
        pin_policy = fields.get(0xAA, b"\x00")[0]
        touch_policy = fields.get(0xAB, b"\x00")[0]
        self._check_policies(p1, pin_policy, touch_policy)
        if p1 in EC_CURVES:
            curve = EC_CURVES[p1]()
            if len(fields.get(0x06, b"")) != (curve.key_size + 7) // 8:
                raise ApduStatus(INCORRECT_PARAMETERS)
            private = ec.derive_private_key(int.from_bytes(fields[0x06], "big"), curve)
        elif p1 == ED25519:
            private = ed25519.Ed25519PrivateKey.from_private_bytes(fields[0x07])
        elif p1 in RSA_BITS:
            p, q = (int.from_bytes(fields[t], "big") for t in (0x01, 0x02))
            e = 65537
            d = pow(e, -1, (p - 1) * (q - 1))
            numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                            rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
            private = numbers.private_key()
        else:
            raise ApduStatus(INCORRECT_PARAMETERS)
        self._store_key(p2, private, p1, pin_policy, touch_policy, False)

    def _attest(self, p1, p2, data):
        if self.version < (4, 3, 0):
            raise ApduStatus(INS_NOT_SUPPORTED)
        key = self.keys.get(p1)
        if key is None or not key.generated:  # imported keys cannot be attested
            raise ApduStatus(REFERENCE_NOT_FOUND if key is None else INCORRECT_PARAMETERS)
        now = datetime.now(timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(f"YubiKey PIV Attestation {p1:02x}"))
                   .issuer_name(self.attestation_cert.subject)
                   .public_key(key.private.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(self.attestation_cert.not_valid_after_utc))
        extensions = [(OID_FIRMWARE, bytes(self.version)),
                      (OID_SERIAL, _der_integer(self.serial)),
                      (OID_POLICY, bytes([key.pin_policy, key.touch_policy]))]
        if not self.yubikey4:
            extensions.append((OID_FORM_FACTOR, bytes([self.form_factor])))
        for oid, value in extensions:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        cert = builder.sign(self.attestation_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.DER)

    def _set_management_key(self, p1, p2, data):
        if not self.mgmt_authenticated:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if p1 != 0xFF or p2 not in (0xFE, 0xFF) or len(data) < 3:
            raise ApduStatus(WRONG_P1P2 if p1 != 0xFF else INCORRECT_PARAMETERS)
        key_type = data[0]
        fields = tlv_dict(data[1:])
        key = fields.get(SLOT_MANAGEMENT, b"")
        if key_type not in MGMT_KEY_LENGTHS or len(key) != MGMT_KEY_LENGTHS[key_type]:
            raise ApduStatus(INCORRECT_PARAMETERS)
        if key_type != TDES and self.version < (5, 4, 0):
            raise ApduStatus(INCORRECT_PARAMETERS)
        self.mgmt_type, self.mgmt_key = key_type, key
        self.mgmt_touch = TOUCH_ALWAYS if p2 == 0xFE else TOUCH_NEVER

    def _move_key(self, p1, p2, data):
        """MOVE KEY (5.7): P2 the slot, P1 the new slot, or FF to delete the key."""
        if self.version < (5, 7, 0):
            raise ApduStatus(INS_NOT_SUPPORTED)
        if not self.mgmt_authenticated:
            raise ApduStatus(SECURITY_NOT_SATISFIED)
        if p2 not in self.keys or (p1 != 0xFF and (p1 not in KEY_SLOTS or p1 in self.keys)):
            raise ApduStatus(INCORRECT_PARAMETERS)
        key = self.keys.pop(p2)
        if p1 != 0xFF:
            self.keys[p1] = key

    def _reset(self, p1, p2, data):
        if self.pin.remaining or self.puk.remaining:
            raise ApduStatus(CONDITIONS_NOT_SATISFIED)
        self._factory_reset()
        self.pin_verified = self.pin_fresh = self.mgmt_authenticated = False

    _PIV = {0xFD: _get_version, 0xF8: _get_serial, 0xF7: _get_metadata, 0xCB: _get_data,
            0xDB: _put_data, 0x20: _verify, 0x24: _change_reference, 0x2C: _reset_retry,
            0xFA: _set_pin_retries, 0x87: _general_authenticate, 0x47: _generate,
            0xFE: _import_key, 0xF9: _attest, 0xFF: _set_management_key, 0xFB: _reset,
            0xF6: _move_key}

    # -- conveniences for tests ---------------------------------------------------------------

    def slot_public_key(self, slot: int):
        return self.keys[slot].private.public_key()


def _unpad(value: bytes) -> bytes:
    return value.rstrip(b"\xff")


def _der_integer(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8 or 1, "big")
    return bytes([0x02, len(body)]) + body


def _public_key_tlvs(key_type: int, public_key) -> bytes:
    if key_type in RSA_BITS:
        numbers = public_key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        return tlv(0x81, n) + tlv(0x82, numbers.e.to_bytes(3, "big"))
    if key_type == ED25519:
        return tlv(0x86, public_key.public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw))
    return tlv(0x86, public_key.public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint))


def _private_operation(key: SlotKey, message: bytes) -> bytes:
    """What a PIV card does with GENERAL AUTHENTICATE's challenge: ECDSA over a digest it is
    given (truncated or padded to the curve size), raw RSA, or Ed25519 over the message."""
    if key.key_type in EC_CURVES:
        size = (key.private.curve.key_size + 7) // 8
        if len(message) > size:
            raise ApduStatus(INCORRECT_PARAMETERS)
        message = message.rjust(size, b"\x00")  # a shorter digest is the same integer
        algorithm = hashes.SHA256() if size == 32 else hashes.SHA384()
        return key.private.sign(message, ec.ECDSA(Prehashed(algorithm)))
    if key.key_type == ED25519:
        return key.private.sign(message)
    numbers = key.private.private_numbers()
    n = numbers.public_numbers.n
    size = (n.bit_length() + 7) // 8
    if len(message) != size or int.from_bytes(message, "big") >= n:
        raise ApduStatus(INCORRECT_PARAMETERS)
    return pow(int.from_bytes(message, "big"), numbers.d, n).to_bytes(size, "big")


# -- in process -------------------------------------------------------------------------------


def in_process_connection(card: PivCard):
    """A yubikit SmartCardConnection to `card` (the card is powered on, as a reader does)."""
    from smartcard.Exceptions import CardConnectionException
    from yubikit.core import TRANSPORT
    from yubikit.core.smartcard import SmartCardConnection

    class EmulatorConnection(SmartCardConnection):
        def __init__(self):
            if card.removed:
                raise CardConnectionException("no card in the reader")
            card.power_on()

        @property
        def transport(self):
            return TRANSPORT.USB

        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            if card.removed or card.should_pull(apdu):
                card.removed = True
                raise CardConnectionException("the card was removed")
            response = card.transmit(apdu)
            return response[:-2], int.from_bytes(response[-2:], "big")

        def close(self) -> None:
            if not card.removed:
                card.power_off()

    return EmulatorConnection()


@dataclass
class EmulatedDevice:
    """What hsmsign's YubiKey store enumerates, for a card in this process."""

    card: PivCard
    name: str = "Yubico YubiKey OTP+FIDO+CCID 00 00"

    def open(self):
        return in_process_connection(self.card)


# -- behind pcscd: a virtual ICC for vsmartcard's vpcd --------------------------------------


VPCD_OFF, VPCD_ON, VPCD_RESET, VPCD_ATR = 0, 1, 2, 4


class VpcdCard:
    """Serves `card` to vpcd at 127.0.0.1:`port` from a thread; `pull()` takes it out."""

    def __init__(self, card: PivCard, port: int, host: str = "127.0.0.1"):
        self.card = card
        self.address = (host, port)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.powered = threading.Event()  # set when the reader powers the card (asks its ATR)

    def insert(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection(self.address, timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(sock)
        self.card.removed = False
        self.powered.clear()
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                        name=f"vpcd-card-{self.card.serial}")
        self._thread.start()

    def pull(self) -> None:
        """The card leaves the reader: the connection to vpcd closes."""
        self._stop.set()
        self.card.removed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _serve(self, sock: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                header = _recv_exactly(sock, 2)
                if header is None:
                    break
                payload = _recv_exactly(sock, struct.unpack(">H", header)[0])
                _quickack(sock)
                if payload is None:
                    break
                if len(payload) == 1:
                    code = payload[0]
                    if code == VPCD_ATR:
                        self._send(sock, self.card.atr)
                        self.powered.set()
                    elif code == VPCD_ON:
                        self.card.power_on()
                    elif code == VPCD_OFF:
                        self.card.power_off()
                    elif code == VPCD_RESET:
                        self.card.reset()
                    continue
                if self.card.should_pull(payload):
                    self._stop.set()
                    self.card.removed = True
                    sock.shutdown(socket.SHUT_RDWR)
                    break
                self._send(sock, self.card.transmit(payload))
        except (OSError, CardRemoved):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        sock.sendall(struct.pack(">H", len(data)) + data)
        _quickack(sock)


def _quickack(sock: socket.socket) -> None:
    # Linux turns quick ACKs off again after a while: set it after every exchange, or each
    # APDU waits for the peer's delayed ACK (~40 ms).
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
