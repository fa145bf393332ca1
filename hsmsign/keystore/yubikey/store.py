"""Keys in YubiKey PIV slots, through yubikey-manager's library (`yubikit.piv`, `ykman.pcsc`).

A key pair is generated on the device (or, the notary route, a software key is put into the
slot while its encrypted file stays as the backup), with the PIN and touch policy asked for, and
a self-signed certificate is written to the slot (see `slots.py`) so that ykcs11 and OpenSC list
the key too.

The store keeps the state of one process (which YubiKeys answered, the keys found, warnings
given, when each was last touched) and leaves the parts to their modules: `device` finds and
opens YubiKeys, `auth` handles PIN and management key, `slots` reads slots, `provisioning`
sets a YubiKey up or erases it, `record` keeps `yubikeys.json`.

Nothing here prints or prompts: secrets come from `Secrets` (environment, else the CLI's
prompter), and messages for the person (the touch prompt, default warnings) go to the `notify`
callback the CLI gives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign.errors import HsmsignError
from hsmsign.keys import Algorithm, KeyRecord, key_id
from hsmsign.keystore.base import Listing, StoreContext
from hsmsign.keystore.pcsc import YubiKeyError
from hsmsign.keystore.scanned import ScannedStore
from hsmsign.keystore.yubikey import provisioning, reports
from hsmsign.keystore.yubikey.auth import Authenticator, factory_defaults, pin_name
from hsmsign.keystore.yubikey.device import (
    SERIAL_VARIABLE,
    Devices,
    Found,
    YubiKeyDevice,
    piv_session,
    transport_errors,
    version_text,
)
from hsmsign.keystore.yubikey.options import YubiKeyOptions, key_type_for, policies
from hsmsign.keystore.yubikey.record import YubiKeyRecord
from hsmsign.keystore.yubikey.reports import YubiKeyInfo
from hsmsign.keystore.yubikey.slots import (
    CERT_NOT_AFTER,
    STORE,
    SlotInfo,
    SlotKey,
    certificate_name,
    check_role,
    check_slot_holds,
    learn_policies,
    occupant,
    read_slots,
)
from hsmsign.secrets import Secrets

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

logger = logging.getLogger(__name__)

TOUCH_CACHE_SECONDS = 15


class YubiKeyStore(ScannedStore):
    """Every YubiKey plugged in; keys are found by their TUF key ID on whichever holds them."""

    kind = STORE
    switched_on = True  # False when the home's configuration turns YubiKeys off (`for_home`)

    def __init__(self, secrets: Secrets, *, home: Path | None = None, force: bool = False,
                 serial: int | str | None = None,
                 devices: Callable[[], list[YubiKeyDevice]] | None = None,
                 notify: Callable[[str], None] | None = None):
        self.secrets = secrets
        self.home = home
        self.notify = notify
        self.warnings: list[str] = []
        self.auth = Authenticator(secrets, self._warn, force=force)
        self.devices = Devices(devices, self._warn,
                               serial if serial is not None else secrets.environ.get(SERIAL_VARIABLE))
        self.remembered = YubiKeyRecord(home)
        self._keys: dict[str, SlotKey] | None = None
        self._last_touch: dict[int, float] = {}

    @classmethod
    def for_home(cls, context: StoreContext) -> YubiKeyStore:
        # `notify` carries the touch prompt and warnings to the CLI.
        notify = context.notify
        if notify is None and context.secrets.prompter is not None:
            notify = context.secrets.prompter.tell
        store = cls(context.secrets, home=context.home, force=context.force,
                    devices=context.yubikey_devices, notify=notify)
        store.switched_on = context.token_config.enabled and context.token_config.yubikeys
        return store

    # -- the KeyStore interface ----------------------------------------------------------

    def enabled(self) -> bool:
        return self.switched_on

    def listing(self) -> Listing:
        try:
            if self.enabled() and self.is_present():
                return Listing(keys=self.list_keys(), warnings=list(self.warnings))
        except YubiKeyError as e:
            return Listing(keys=[], warnings=[f"YubiKey keys not listed: {e}"])
        return Listing(keys=[])

    def import_key(self, key, role: str, options: YubiKeyOptions | None = None, *,
                   gun: str | None = None, passphrase: str | None = None) -> KeyRecord:
        """`import_private` (a slot keeps no GUN and needs no passphrase)."""
        return self.import_private(key, role, options or YubiKeyOptions())

    def signer(self, keyid: str, public_key=None) -> Signer:
        from hsmsign.keystore.signers import YubiKeySigner  # securesystemslib: only to sign

        return YubiKeySigner(self, keyid, public_key)

    def close(self) -> None:
        return None  # every operation opens the card and releases it

    def reason_asked(self) -> str:
        self.require_present()
        return f"asked for a YubiKey key: {self.describe()}"

    def reason_auto_root(self, file_option: str) -> str | None:
        if not (self.enabled() and self.is_present()):
            return None
        self.require_present()  # several YubiKeys and no --serial: never a guess
        return f"a YubiKey is plugged in: {self.describe()}"

    @property
    def serial(self) -> int | None:
        """The YubiKey asked for (`--serial`, else $HSMSIGN_YUBIKEY_SERIAL), if any."""
        return self.devices.serial

    @serial.setter
    def serial(self, value) -> None:
        self.devices.wanted = value
        self._keys = None

    @property
    def force(self) -> bool:
        return self.auth.force

    @force.setter
    def force(self, value: bool) -> None:
        self.auth.force = value

    @property
    def pin_variables(self) -> list[str] | None:
        """Where the PIN comes from: default HSMSIGN_PIN; a ceremony's custodian's variable."""
        return self.auth.pin_variables

    @pin_variables.setter
    def pin_variables(self, value: list[str] | None) -> None:
        self.auth.pin_variables = value

    def _warn(self, message: str) -> None:
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self.notify is not None:
            self.notify(f"warning: {message}")

    # -- which YubiKey -------------------------------------------------------------------

    def is_present(self) -> bool:
        try:
            return bool(self.devices.candidates())
        except YubiKeyError:
            return False

    def target(self) -> Found:
        """The one YubiKey an operation acts on: `--serial`'s, or the only one plugged in."""
        return self.devices.target()

    def require_present(self) -> None:
        self.target()

    def serials(self) -> list[int]:
        """The serial numbers of the YubiKeys plugged in (none when pcscd cannot be reached)."""
        try:
            return [f.serial for f in self.devices.all()]
        except YubiKeyError:
            return []

    def describe(self, found: Found | None = None) -> str:
        found = found or self.target()
        return f"YubiKey {found.serial} (firmware {version_text(found.version)})"

    def session(self, found: Found, doing: str):
        """A PIV session on `found` for one operation, warning about factory defaults."""
        return piv_session(found, doing, self.auth.warn_defaults)

    # -- PIN -----------------------------------------------------------------------------

    def check_pin(self) -> None:
        """Verify the PIN of the target YubiKey now (tries read first), so that a wrong one is
        caught before anything is made; the PIN is kept for the process."""
        found = self.target()
        with self.session(found, "checking the PIN") as piv:
            self.auth.verify_pin(piv, found)

    def factory_defaults(self) -> list[str]:
        """Which of PIN, PUK and management key of the target YubiKey are still the factory's
        (before firmware 5.3: the PIN only when it was the one verified in this process)."""
        found = self.target()
        with self.session(found, "checking for factory defaults") as piv:
            return factory_defaults(piv, pin=self.secrets.cached_pin(pin_name(found)))

    # -- reading slots -------------------------------------------------------------------

    def _read_slots(self, piv, found: Found) -> list[tuple[SlotInfo, SlotKey | None]]:
        return read_slots(piv, found, self.remembered.slots(found.serial))

    def keys_on(self, serial: int) -> list[KeyRecord]:
        """The keys hsmsign lists on the YubiKey with `serial` (e.g. what a reset erases)."""
        return [key.record for key in self._scan().values() if key.serial == serial]

    def _scan(self) -> dict[str, SlotKey]:
        if self._keys is not None:
            return self._keys
        keys: dict[str, SlotKey] = {}
        for found in self.devices.candidates():  # with a serial asked for, that one's keys only
            with self.session(found, "reading its slots") as piv:
                for _, key in self._read_slots(piv, found):
                    if key is not None and key.record.keyid not in keys:
                        keys[key.record.keyid] = key  # the same key on two YubiKeys: the first signs
        self._keys = keys
        return keys

    def forget_keys(self) -> None:
        """The slots changed: read them again when next asked."""
        self._keys = None

    def _missing(self, keyid: str) -> str:
        return f"key {keyid} is on no YubiKey plugged in"

    def _found_for(self, key: SlotKey) -> Found:
        return self.devices.by_serial(key.serial)

    def remembered_serial(self, keyid: str) -> int | None:
        """The YubiKey this home made or imported `keyid` on, as far as hsmsign remembers (it
        may be in a drawer: this reads no device)."""
        return self.remembered.serial_of(keyid)

    # -- token list --------------------------------------------------------------------

    def info(self) -> list[YubiKeyInfo]:
        """What `token list` shows: every YubiKey (or `--serial`'s), its PIN state and slots."""
        return reports.info(self)

    # -- making keys ---------------------------------------------------------------------

    def _check_slot_free(self, piv, found: Found, slot) -> None:
        occupied = occupant(piv, found, slot, self.remembered.slots(found.serial))
        if occupied is not None and not self.force:
            what = f"key {occupied.keyid}" if occupied.keyid else "a key"
            raise YubiKeyError(f"slot {occupied.slot} of YubiKey {found.serial} already holds "
                               f"{what}; choose another slot (`key generate --slot`), or, only if "
                               "that key is in use nowhere, replace it with --force")

    def generate(self, role: str, alg: Algorithm, options: YubiKeyOptions | None = None, *,
                 gun: str | None = None) -> KeyRecord:
        """A key pair generated on the YubiKey; the private key never exists anywhere else (a
        slot keeps no GUN)."""
        from yubikit.piv import SLOT

        options = options or YubiKeyOptions()
        self.remembered.check_home()  # before the device: a key must not be made that cannot be recorded
        found = self.target()
        key_type = key_type_for(alg, found)
        pin_policy, touch_policy = policies(options)
        slot = SLOT(int(options.slot, 16))
        check_role(role)
        with self.session(found, "generating a key") as piv:
            self._prepare_slot(piv, found, slot, key_type, pin_policy, touch_policy, generate=True)
            public = piv.generate_key(slot, key_type, pin_policy, touch_policy)
            self._finish(piv, found, slot, key_type, public, role, options, "generated")
        return self._after_change(key_id(public))

    def import_private(self, key, role: str, options: YubiKeyOptions = YubiKeyOptions()
                       ) -> KeyRecord:
        """The notary route: a software key (whose encrypted file stays as the backup) is put
        into the slot; it cannot be attested, since it was not generated there."""
        from yubikit.piv import KEY_TYPE, SLOT

        self.remembered.check_home()
        found = self.target()
        pin_policy, touch_policy = policies(options)
        slot = SLOT(int(options.slot, 16))
        check_role(role)
        try:
            key_type = KEY_TYPE.from_public_key(key.public_key())
        except ValueError as e:
            raise YubiKeyError(f"a YubiKey cannot hold this key ({e})") from None
        with self.session(found, "importing a key") as piv:
            self._prepare_slot(piv, found, slot, key_type, pin_policy, touch_policy, generate=False)
            piv.put_key(slot, key, pin_policy, touch_policy)
            self._finish(piv, found, slot, key_type, key.public_key(), role, options, "imported")
        return self._after_change(key_id(key.public_key()))

    def _prepare_slot(self, piv, found: Found, slot, key_type, pin_policy, touch_policy, *,
                      generate: bool) -> None:
        """Before a key goes into `slot`: the firmware can hold it with these policies, the
        slot is free (or --force), and the management key is authenticated."""
        from yubikit.core import NotSupportedError

        try:
            piv.check_key_support(key_type, pin_policy, touch_policy, generate)
        except NotSupportedError as e:
            raise YubiKeyError(f"YubiKey {found.serial} (firmware "
                               f"{version_text(found.version)}) cannot do this: {e}") from None
        self._check_slot_free(piv, found, slot)
        self.auth.authenticate(piv, found)

    def _finish(self, piv, found: Found, slot, key_type, public, role: str,
                options: YubiKeyOptions, how: str) -> None:
        """Write the slot's self-signed certificate (a signature: PIN and touch as set) and
        remember the policies for firmware that cannot report them."""
        from cryptography import x509
        from ykman.piv import sign_certificate_builder
        from yubikit.core.smartcard import ApduError

        keyid = key_id(public)
        self.remembered.remember(found.serial, f"{int(slot):02x}", {
            "keyid": keyid, "role": role, "pin_policy": options.pin_policy,
            "touch_policy": options.touch, "origin": how})
        name = certificate_name(role, keyid)
        builder = (x509.CertificateBuilder().public_key(public).subject_name(name).issuer_name(name)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(datetime.now(timezone.utc).replace(microsecond=0))
                   .not_valid_after(CERT_NOT_AFTER))
        try:
            self.auth.verify_pin(piv, found)
            touch = options.touch != "never"
            if touch:
                self._ask_touch(found, "to sign the slot's certificate")
            cert = sign_certificate_builder(piv, slot, key_type, builder)
            piv.put_certificate(slot, cert)
        except (ApduError, HsmsignError, *transport_errors()) as e:
            detail = ("it was not touched in time" if isinstance(e, ApduError) and e.sw == 0x6982
                      else "the YubiKey stopped answering: was it removed?"
                      if isinstance(e, transport_errors()) else str(e))
            raise YubiKeyError(f"the key was {how} in slot {int(slot):02x} of YubiKey "
                               f"{found.serial} but its certificate was not written ({detail}); "
                               "run the command again with --force to replace it") from None
        if touch:
            self._last_touch[found.serial] = time.monotonic()

    def _after_change(self, keyid: str) -> KeyRecord:
        self._keys = None
        return self.record(keyid)

    def remove(self, keyid: str) -> None:
        """Delete the key and the slot's certificate (firmware 5.7 and later; before, a PIV key
        can only be overwritten or reset away, and hsmsign will not pretend otherwise)."""
        from yubikit.piv import SLOT

        key = self._get(keyid)
        found = self._found_for(key)
        if found.version < (5, 7, 0):
            raise YubiKeyError(
                f"YubiKey {found.serial} (firmware {version_text(found.version)}) cannot delete "
                f"the key in slot {key.slot:02x}; replace it (`hsmsign key generate ... --slot "
                f"{key.slot:02x} --force`) or erase the PIV application (`hsmsign token reset`); "
                "nothing was removed")
        with self.session(found, "removing a key") as piv:
            self.auth.authenticate(piv, found)
            piv.delete_key(SLOT(key.slot))
            piv.delete_certificate(SLOT(key.slot))
        self.remembered.forget(found.serial, f"{key.slot:02x}")
        self._keys = None

    # -- signing -------------------------------------------------------------------------

    def _needs_touch(self, key: SlotKey) -> bool:
        if key.touch_policy == "cached":
            return time.monotonic() - self._last_touch.get(key.serial, -1e9) >= TOUCH_CACHE_SECONDS
        # Unknown (firmware without metadata, a key hsmsign did not make): better a prompt too many.
        return key.touch_policy in ("always", None)

    def _ask_touch(self, found: Found, why: str = "") -> None:
        if self.notify is not None:
            self.notify(f"Touch your YubiKey (serial {found.serial}) now{' ' + why if why else ''}")

    def sign(self, keyid: str, payload: bytes) -> bytes:
        """A signature over `payload` in the encoding TUF expects, made on the YubiKey."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        from yubikit.core.smartcard import SW, ApduError
        from yubikit.piv import KEY_TYPE, SLOT

        key = self._get(keyid)
        found = self._found_for(key)
        short = keyid[:7]
        logger.debug("signing with key %s in slot %02x of YubiKey %s", short, key.slot, found.serial)
        with self.session(found, f"signing with key {short}") as piv:
            check_slot_holds(piv, found, key)
            if key.touch_policy is None:
                learn_policies(piv, key)
            if key.pin_policy != "never":
                self.auth.verify_pin(piv, found)
            touch = self._needs_touch(key)
            if touch:
                self._ask_touch(found)
            if key.key_type == KEY_TYPE.ED25519:
                hash_algorithm, pad = None, None
            elif key.key_type.algorithm.value == "rsa":
                hash_algorithm = hashes.SHA256()
                pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            else:
                hash_algorithm = hashes.SHA384() if key.key_type == KEY_TYPE.ECCP384 else hashes.SHA256()
                pad = None
            try:
                signature = piv.sign(SLOT(key.slot), key.key_type, payload, hash_algorithm, pad)
            except ApduError as e:
                if e.sw == SW.SECURITY_CONDITION_NOT_SATISFIED and (touch or key.touch_policy is None):
                    raise YubiKeyError(f"YubiKey {found.serial} was not touched in time; nothing "
                                       "was signed; run the command again and touch it when "
                                       "asked") from None
                if e.sw == SW.SECURITY_CONDITION_NOT_SATISFIED:
                    raise YubiKeyError(f"YubiKey {found.serial} refused to sign with slot "
                                       f"{key.slot:02x} (PIN not verified); nothing was signed") from None
                if e.sw in (SW.INCORRECT_PARAMETERS, SW.WRONG_PARAMETERS_P1P2):
                    raise YubiKeyError(f"slot {key.slot:02x} of YubiKey {found.serial} does not hold "
                                       f"the {key.record.algorithm} key {short} its certificate "
                                       "names; nothing was signed") from None
                raise YubiKeyError(f"YubiKey {found.serial} failed to sign ({e}); nothing was "
                                   "signed") from None
        if touch:
            self._last_touch[found.serial] = time.monotonic()
        return signature

    # -- attestation ---------------------------------------------------------------------

    def attestation(self, keyid: str) -> tuple[bytes, bytes, int]:
        """(the slot's attestation certificate, the device's f9 certificate, serial), DER."""
        return reports.attestation(self, keyid)

    # -- setup and reset -----------------------------------------------------------------

    def setup(self) -> list[str]:
        """Change PIN, PUK and management key in one step; what was done, in order."""
        return provisioning.setup(self)

    def reset(self) -> int:
        """Erase the PIV application of the target YubiKey; its serial."""
        return provisioning.reset(self)
