"""Making a YubiKey ready for keys (`token setup`) and erasing it (`token reset`).

Setup replaces the factory PIN, PUK and management key in one step; the new management key is
random and stored on the device protected by the PIN, as `ykman piv access
change-management-key --protect` does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hsmsign.keystore.pcsc import YubiKeyError
from hsmsign.errors import WrongPin
from hsmsign.keystore.yubikey.auth import (
    FACTORY_PIN,
    FACTORY_PUK,
    pin_name,
    refuse_risky_try,
    tries_left,
)
from hsmsign.keystore.yubikey.device import transport_errors

if TYPE_CHECKING:
    from hsmsign.keystore.yubikey.store import YubiKeyStore

PUK_VARIABLE = "HSMSIGN_PUK"
NEW_PIN_VARIABLE = "HSMSIGN_NEW_PIN"
NEW_PUK_VARIABLE = "HSMSIGN_NEW_PUK"


def setup(store: YubiKeyStore) -> list[str]:
    """Change PIN, PUK and management key of the store's target YubiKey; what was done, in
    order."""
    from ykman.piv import get_pivman_data, pivman_change_pin, pivman_set_mgm_key
    from yubikit.core import InvalidPinError, NotSupportedError
    from yubikit.piv import MANAGEMENT_KEY_TYPE

    secrets, auth = store.secrets, store.auth
    found = store.target()
    new_pin = secrets.device_secret(
        NEW_PIN_VARIABLE, f"Enter a new PIN for YubiKey {found.serial} (6 to 8 characters): ",
        what="new PIN", new=True)
    new_puk = secrets.device_secret(
        NEW_PUK_VARIABLE, f"Enter a new PUK for YubiKey {found.serial} (6 to 8 characters): ",
        what="new PUK", new=True)
    for what, value, factory in (("PIN", new_pin, FACTORY_PIN), ("PUK", new_puk, FACTORY_PUK)):
        if not 6 <= len(value.encode()) <= 8:
            raise YubiKeyError(f"the new {what} must have 6 to 8 characters; nothing was changed")
        if value == factory:
            raise YubiKeyError(f"the new {what} is the factory default; choose another; "
                               "nothing was changed")
    done: list[str] = []
    with store.session(found, "setting it up") as piv:
        auth.authenticate(piv, found)
        old_pin = auth.verify_pin(piv, found)
        try:
            puk_tries = piv.get_puk_metadata().attempts_remaining
        except NotSupportedError:
            puk_tries = 0 if get_pivman_data(piv).puk_blocked else None
        refuse_risky_try(
            puk_tries, force=auth.force,
            blocked=YubiKeyError(f"the PUK of YubiKey {found.serial} is blocked; nothing was "
                                 "changed (the PIN can still be changed with `ykman piv access "
                                 "change-pin`)"),
            one_left=f"YubiKey {found.serial} has one PUK try left; re-run with --force if you "
                     "are sure of the PUK; nothing was changed")
        old_puk = secrets.device_secret(
            PUK_VARIABLE, f"Enter the current PUK of YubiKey {found.serial} (factory default "
            f"{FACTORY_PUK}): ", what="PUK")
        try:
            piv.change_puk(old_puk, new_puk)
        except InvalidPinError as e:
            raise WrongPin(f"wrong PUK for YubiKey {found.serial}; "
                           f"{tries_left(e.attempts_remaining, 'PUK')}; nothing was "
                           "changed", attempts_remaining=e.attempts_remaining) from None
        done.append("PUK changed")
        try:
            pivman_change_pin(piv, old_pin, new_pin)
            done.append("PIN changed")
            secrets.remember_pin(pin_name(found), new_pin)
            piv.verify_pin(new_pin)
            key_type = (MANAGEMENT_KEY_TYPE.AES192 if found.version >= (5, 4, 0)
                        else MANAGEMENT_KEY_TYPE.TDES)
            pivman_set_mgm_key(piv, os.urandom(key_type.key_len), key_type, touch=False,
                               store_on_device=True)
            done.append(f"management key replaced by a random {key_type.name} key stored on "
                        "the YubiKey, protected by the PIN")
        except Exception as e:
            why = ("it stopped answering: was it removed?" if isinstance(e, transport_errors())
                   else type(e).__name__)
            raise YubiKeyError(f"setting up YubiKey {found.serial} stopped after: "
                               f"{'; '.join(done)} ({why}); the new values are in effect: "
                               "run `hsmsign token setup` again, giving them as the current "
                               "ones") from None
    auth.warned.pop(found.serial, None)
    store.warnings[:] = [w for w in store.warnings if str(found.serial) not in w]
    return done


def reset(store: YubiKeyStore) -> int:
    """Erase the PIV application of the store's target YubiKey (keys, certificates, PIN, PUK
    and management key back to factory values). The caller has the person confirm first."""
    found = store.target()
    with store.session(found, "resetting it") as piv:
        piv.reset()
    store.remembered.forget(found.serial, None)
    store.forget_keys()
    return found.serial
