"""Proving who may use a YubiKey: the PIN, the management key, and factory-default checks.

PIN safety: the tries left are read before every VERIFY (metadata from firmware 5.3, an empty
VERIFY before), hsmsign refuses to try when one is left unless forced, never retries by itself,
and says how many remain after a wrong PIN. Factory defaults (PIN 123456, PUK 12345678, the
default management key) are detected and warned about on every use. A management key set by
`token setup` is random and stored on the device protected by the PIN, as `ykman piv access
change-management-key --protect` does.
"""

from __future__ import annotations

from collections.abc import Callable

from hsmsign.errors import HsmsignError, PinLocked, PinPolicyError, WrongPin
from hsmsign.keystore.pcsc import YubiKeyError
from hsmsign.keystore.yubikey.device import Found
from hsmsign.secrets import Secrets

MANAGEMENT_KEY_VARIABLE = "HSMSIGN_MANAGEMENT_KEY"
FACTORY_PIN = "123456"
FACTORY_PUK = "12345678"


def factory_defaults(piv, *, pin: str | None = None) -> list[str]:
    """Which of PIN, PUK and management key are still the factory's (before firmware 5.3:
    the PIN only when `pin` is the one given, since checking it would cost a try)."""
    from yubikit.core import BadResponseError, NotSupportedError
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import DEFAULT_MANAGEMENT_KEY

    defaults = []
    try:
        if piv.get_pin_metadata().default_value:
            defaults.append("PIN")
        if piv.get_puk_metadata().default_value:
            defaults.append("PUK")
        if piv.get_management_key_metadata().default_value:
            defaults.append("management key")
        return defaults
    except NotSupportedError:
        pass
    # Before firmware 5.3 only what costs nothing can be checked: a PIN we were given,
    # and the management key (it has no retry counter).
    if pin == FACTORY_PIN:
        defaults.append("PIN")
    try:
        piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        defaults.append("management key")
    except (ApduError, BadResponseError, ValueError):
        pass
    return defaults


def defaults_warning(serial: int, defaults: list[str]) -> str:
    return (f"YubiKey {serial} still has the factory default {_join(defaults)}: anyone holding it "
            "can use or replace its keys; run `hsmsign token setup`")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def tries_left(remaining: int, what: str) -> str:
    if remaining == 0:
        return (f"the {what} is now blocked"
                + ("; unblock it with the PUK (`ykman piv access unblock-pin`)" if what == "PIN" else ""))
    if remaining == 1:
        return f"1 try left before the {what} is blocked"
    return f"{remaining} tries left"


def refuse_risky_try(tries: int | None, *, force: bool, blocked: HsmsignError,
                     one_left: str) -> None:
    """Before a PIN or PUK is tried: never when it is blocked (`blocked` says what to do), and
    with one try left only when forced, since a wrong value would block it."""
    if tries == 0:
        raise blocked
    if tries == 1 and not force:
        raise PinPolicyError(one_left)


def pin_name(found: Found) -> str:
    """The name a YubiKey's PIN is asked for and remembered under."""
    return f"YubiKey {found.serial}"


class Authenticator:
    """PIN and management key for the YubiKeys of one process; warns about factory defaults
    once per YubiKey (and again only for a default newly found)."""

    def __init__(self, secrets: Secrets, warn: Callable[[str], None], *, force: bool = False):
        self.secrets = secrets
        self.warn = warn
        self.force = force
        self.pin_variables: list[str] | None = None  # default HSMSIGN_PIN; a ceremony's pin_env
        self.warned: dict[int, set[str]] = {}  # serial -> defaults already warned about

    def warn_defaults(self, piv, found: Found, *, pin: str | None = None) -> None:
        """Warn (once per process and YubiKey, and again only for a newly found default, e.g.
        a YubiKey 4's PIN once it was used) about factory defaults still in place."""
        if pin is None and found.serial in self.warned:
            return
        self.warned.setdefault(found.serial, set())
        new = [d for d in factory_defaults(piv, pin=pin) if d not in self.warned[found.serial]]
        if new:
            self.warned[found.serial].update(new)
            self.warn(defaults_warning(found.serial, new))

    def check_pin_tries(self, piv, found: Found) -> None:
        """Refuse before a VERIFY that could block the PIN; spends no try."""
        refuse_risky_try(
            piv.get_pin_attempts(), force=self.force,
            blocked=PinLocked(f"the PIN of YubiKey {found.serial} is blocked; unblock it "
                              "with the PUK (`ykman piv access unblock-pin`) or reset the "
                              "PIV application (`hsmsign token reset`)"),
            one_left=f"YubiKey {found.serial} has one PIN try left and a wrong PIN would block "
                     "it; re-run with --force if you are sure of the PIN")

    def verify_pin(self, piv, found: Found) -> str:
        from yubikit.core import InvalidPinError

        self.check_pin_tries(piv, found)
        name = pin_name(found)
        pin = self.secrets.pin(name, self.pin_variables)
        if not 6 <= len(pin.encode()) <= 8:
            self.secrets.forget_pin(name)
            raise YubiKeyError(f"a YubiKey PIN has 6 to 8 characters, the one given has not; "
                               f"nothing was sent to YubiKey {found.serial}")
        try:
            piv.verify_pin(pin)
        except InvalidPinError as e:
            self.secrets.forget_pin(name)
            raise WrongPin(f"wrong PIN for YubiKey {found.serial}; "
                           f"{tries_left(e.attempts_remaining, 'PIN')}",
                           attempts_remaining=e.attempts_remaining) from None
        if pin == FACTORY_PIN:
            self.warn_defaults(piv, found, pin=pin)
        return pin

    def authenticate(self, piv, found: Found) -> None:
        """Authenticate with the management key: the default one, the one `token setup` stored
        on the device (protected by the PIN), or $HSMSIGN_MANAGEMENT_KEY / a prompt."""
        from ykman.piv import (
            derive_management_key,
            get_pivman_data,
            get_pivman_protected_data,
        )
        from yubikit.core import NotSupportedError
        from yubikit.piv import DEFAULT_MANAGEMENT_KEY

        try:
            if piv.get_management_key_metadata().default_value:
                return self._try_management_key(piv, found, DEFAULT_MANAGEMENT_KEY, "default")
            default_known = False
        except NotSupportedError:
            default_known = None  # before 5.3: unknown until tried
        pivman = get_pivman_data(piv)
        if pivman.has_stored_key:
            self.verify_pin(piv, found)
            key = get_pivman_protected_data(piv).key
            if key is None:
                raise YubiKeyError(f"YubiKey {found.serial} says its management key is stored on "
                                   f"it, but it is not; set {MANAGEMENT_KEY_VARIABLE}")
            return self._try_management_key(piv, found, key, "stored")
        if pivman.has_derived_key:
            pin = self.verify_pin(piv, found)
            return self._try_management_key(piv, found, derive_management_key(pin, pivman.salt),
                                            "derived")
        value = self.secrets.environ.get(MANAGEMENT_KEY_VARIABLE)
        if not value and default_known is None:
            try:
                return self._try_management_key(piv, found, DEFAULT_MANAGEMENT_KEY, "default")
            except YubiKeyError:
                pass  # not the default: ask for it
        if not value:
            value = self.secrets.device_secret(
                MANAGEMENT_KEY_VARIABLE,
                f"Enter the management key (hex) of YubiKey {found.serial}: ",
                what="management key")
        try:
            key = bytes.fromhex(value.strip())
        except ValueError:
            raise YubiKeyError(f"{MANAGEMENT_KEY_VARIABLE} is not hexadecimal") from None
        self._try_management_key(piv, found, key, MANAGEMENT_KEY_VARIABLE)

    @staticmethod
    def _try_management_key(piv, found: Found, key: bytes, source: str) -> None:
        from yubikit.core import BadResponseError
        from yubikit.core.smartcard import ApduError

        try:
            piv.authenticate(key)
        except (ApduError, BadResponseError, ValueError):
            where = {"default": "the default management key",
                     "stored": "the management key stored on the device",
                     "derived": "the management key derived from the PIN"}.get(source, source)
            raise YubiKeyError(f"wrong management key for YubiKey {found.serial} ({where} was "
                               f"refused); set {MANAGEMENT_KEY_VARIABLE} to its hex value") from None
