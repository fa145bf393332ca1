"""YubiKeys behind pcscd: finding their readers and opening them for one operation.

A YubiKey is recognised by its reader's name, as ykman does ("Yubico YubiKey ..."), and opened
exclusively; when another program (ykcs11, gpg's scdaemon) holds it shared, the operation runs
inside a PC/SC transaction instead, so that nobody's APDUs interleave with ours. Unlike ykman,
hsmsign never kills other programs to get the card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hsmsign.errors import HsmsignError

if TYPE_CHECKING:
    from yubikit.core.smartcard import SmartCardConnection

YUBIKEY_READER = "yubico yubikey"  # ykman.pcsc.YK_READER_NAME


class YubiKeyError(HsmsignError):
    """A YubiKey cannot be reached or used as asked (pcscd absent, card held, bad request)."""


class PcscYubiKey:
    """A YubiKey behind pcscd, opened exclusively for one operation."""

    def __init__(self, reader):
        self.reader = reader
        self.name = reader.name

    def open(self) -> SmartCardConnection:
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.ExclusiveConnectCardConnection import (
            ExclusiveConnectCardConnection,
        )
        from ykman.pcsc import ScardSmartCardConnection

        raw = self.reader.createConnection()
        try:
            return ScardSmartCardConnection(ExclusiveConnectCardConnection(raw))
        except NoCardException:
            _discard(raw)
            raise YubiKeyError(f"no YubiKey in reader {self.name}; plug it in") from None
        except CardConnectionException:
            _discard(raw)  # another program (ykcs11, gpg's scdaemon) holds it shared
        raw = self.reader.createConnection()
        try:
            return ScardSmartCardConnection(_Transaction(raw))
        except (CardConnectionException, NoCardException) as e:
            _discard(raw)
            raise YubiKeyError(f"cannot open the YubiKey in reader {self.name} ({e}); is another "
                               "program using it exclusively?") from None


def _discard(raw) -> None:
    """Release a pyscard connection whose connect failed (its card handle is not valid)."""
    while hasattr(raw, "component"):  # the PC/SC connection inside pyscard's decorators
        raw = raw.component
    raw.hcard = None
    try:
        raw.release()
    except Exception:
        pass


def _transaction_class():
    from smartcard.ExclusiveTransmitCardConnection import (
        ExclusiveTransmitCardConnection,
    )

    class Transaction(ExclusiveTransmitCardConnection):
        """A shared connection holding a PC/SC transaction from connect to disconnect."""

        def connect(self, protocol=None, mode=None, disposition=None):
            self.component.connect(protocol, mode, disposition)
            self.lock()

        def transmit(self, command, protocol=None):
            return self.component.transmit(command, protocol)

        def disconnect(self):
            try:
                self.unlock()
            except Exception:
                pass
            self.component.disconnect()

    return Transaction


def _Transaction(connection):
    return _transaction_class()(connection)


def pcsc_devices() -> list[PcscYubiKey]:
    """Every YubiKey reader pcscd knows (by name, as ykman finds them); an error when pcscd
    cannot be reached. Only pyscard is loaded here: yubikey-manager waits for a YubiKey."""
    try:
        from smartcard.System import readers as list_readers
    except ImportError as e:  # pragma: no cover - a broken install
        raise YubiKeyError(f"pyscard is not usable ({e}); reinstall hsmsign") from None
    try:
        readers = list_readers()
    except Exception as e:
        raise YubiKeyError(f"cannot reach pcscd ({type(e).__name__}); is it running? "
                           "(`sudo systemctl start pcscd`)") from None
    return [PcscYubiKey(r) for r in readers if YUBIKEY_READER in r.name.lower()]


def pid_for(name: str):
    """The USB product ID ykman derives from a reader name (what `read_info` needs)."""
    from yubikit.core import PID, YUBIKEY
    from yubikit.management import USB_INTERFACE

    interfaces = USB_INTERFACE.CCID
    if "OTP" in name:
        interfaces |= USB_INTERFACE.OTP
    if "FIDO" in name or "U2F" in name:
        interfaces |= USB_INTERFACE.FIDO
    return PID.of(YUBIKEY.NEO if "NEO" in name else YUBIKEY.YK4, interfaces)
