"""Keys in YubiKey PIV slots, through yubikey-manager's library.

The parts: `device` (finding YubiKeys, opening a session for one operation), `auth` (PIN,
management key, factory-default checks), `slots` (what each slot holds), `options` (how a new
key goes into a slot), `provisioning` (`token setup`/`token reset`), `record` (`yubikeys.json`)
and `store` (the key store: generate, import, sign, remove, attest). The names below are the
package's public face.
"""

from hsmsign.keystore.pcsc import YubiKeyError
from hsmsign.keystore.yubikey.auth import (
    FACTORY_PIN,
    FACTORY_PUK,
    MANAGEMENT_KEY_VARIABLE,
    defaults_warning,
)
from hsmsign.keystore.yubikey.device import SERIAL_VARIABLE, YubiKeyDevice, parse_serial
from hsmsign.keystore.yubikey.options import (
    PIN_POLICY_CHOICES,
    TOUCH_CHOICES,
    YubiKeyOptions,
)
from hsmsign.keystore.yubikey.provisioning import (
    NEW_PIN_VARIABLE,
    NEW_PUK_VARIABLE,
    PUK_VARIABLE,
)
from hsmsign.keystore.yubikey.record import RECORD_FILE
from hsmsign.keystore.yubikey.slots import DEFAULT_SLOT, SLOT_NAMES, STORE, SlotInfo
from hsmsign.keystore.yubikey.store import YubiKeyInfo, YubiKeyStore

__all__ = ["DEFAULT_SLOT", "FACTORY_PIN", "FACTORY_PUK", "MANAGEMENT_KEY_VARIABLE",
           "NEW_PIN_VARIABLE", "NEW_PUK_VARIABLE", "PIN_POLICY_CHOICES", "PUK_VARIABLE",
           "RECORD_FILE", "SERIAL_VARIABLE", "SLOT_NAMES", "STORE", "SlotInfo", "TOUCH_CHOICES",
           "YubiKeyDevice", "YubiKeyError", "YubiKeyInfo", "YubiKeyOptions", "YubiKeyStore",
           "defaults_warning", "parse_serial"]
