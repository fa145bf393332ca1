"""Finding the YubiKeys plugged in and opening one for one operation.

Access to a YubiKey is exclusive per operation and released right after: each operation opens
the card (exclusively, or inside a PC/SC transaction when another program such as ykcs11 holds
it shared), does its work and closes it, so `ykman`, `ykcs11` and hsmsign never interleave.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hsmsign.keystore.pcsc import YubiKeyError, pcsc_devices, pid_for

if TYPE_CHECKING:
    from yubikit.core.smartcard import SmartCardConnection

SERIAL_VARIABLE = "HSMSIGN_YUBIKEY_SERIAL"


class YubiKeyDevice(Protocol):
    """One YubiKey's smart card interface (a PC/SC reader, or a test double in process)."""

    name: str

    def open(self) -> SmartCardConnection: ...


@dataclass
class Found:
    """A YubiKey that answered: its reader, serial and firmware version."""

    device: Any
    serial: int
    version: tuple[int, int, int]


def gone(serial: int | str, doing: str) -> YubiKeyError:
    return YubiKeyError(f"YubiKey {serial} stopped answering while {doing} (was it removed?); "
                        "nothing was signed or changed by this step; plug it in and run the "
                        "command again")


def transport_errors() -> tuple[type[BaseException], ...]:
    """What a YubiKey pulled out (or a reader gone) raises, whichever layer notices."""
    from smartcard.Exceptions import SmartcardException

    return (SmartcardException, ConnectionError, EOFError)


def version_text(version) -> str:
    return ".".join(str(v) for v in tuple(version)[:3])


def parse_serial(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise YubiKeyError(f"a YubiKey serial is a number, not {value!r}") from None


@contextmanager
def open_card(device, serial: int | None) -> Iterator[Any]:
    """A connection to `device` for one operation, closed afterwards whatever happens."""
    try:
        conn = device.open()
    except transport_errors() as e:
        raise YubiKeyError(f"cannot open YubiKey {serial or device.name} ({e}); plug it in "
                           "again") from None
    try:
        yield conn
    except transport_errors():
        raise gone(serial or device.name, "in use") from None
    finally:
        try:
            conn.close()
        except Exception:
            pass


@contextmanager
def piv_session(found: Found, doing: str,
                on_open: Callable[[Any, Found], None] | None = None) -> Iterator[Any]:
    """A PIV session on `found` for one operation; the card is released afterwards.
    `on_open(piv, found)` runs first (the factory-default check), under the same guard."""
    from yubikit.piv import PivSession

    with open_card(found.device, found.serial) as conn:
        try:
            piv = PivSession(conn)
            if tuple(piv.version) >= (5, 0, 3) and piv.get_serial() != found.serial:
                raise YubiKeyError(f"the YubiKey in reader {found.device.name} is no longer "
                                   f"{found.serial}; run the command again")
            if on_open is not None:
                on_open(piv, found)
            yield piv
        except transport_errors():
            raise gone(found.serial, doing) from None


def identify(conn, name: str) -> tuple[int, tuple[int, int, int]]:
    """The serial and firmware version of the YubiKey behind `conn`."""
    from yubikit.piv import PivSession

    piv = PivSession(conn)
    version = tuple(piv.version)
    if version >= (5, 0, 3):
        return piv.get_serial(), version
    from yubikit.support import read_info

    info = read_info(conn, pid_for(name))  # YubiKey 4: the management application
    if not info.serial:
        raise YubiKeyError(f"the YubiKey in reader {name} does not tell its serial number; "
                           "enable its serial visibility with `ykman otp settings`")
    return info.serial, version


class Devices:
    """The YubiKeys plugged in (read once per process), and the one asked for by serial."""

    def __init__(self, source: Callable[[], list[YubiKeyDevice]] | None,
                 warn: Callable[[str], None], serial: int | str | None = None):
        self._source = source or pcsc_devices
        self._warn = warn
        self.wanted = serial  # `--serial` or $HSMSIGN_YUBIKEY_SERIAL, as given
        self._found: list[Found] | None = None

    @property
    def serial(self) -> int | None:
        return parse_serial(self.wanted)

    def all(self) -> list[Found]:
        if self._found is not None:
            return self._found
        found = []
        for device in self._source():
            try:
                with open_card(device, None) as conn:
                    serial, version = identify(conn, device.name)
            except YubiKeyError:
                continue  # an empty reader, or one held exclusively by another program
            except Exception as e:
                self._warn(f"the YubiKey in reader {device.name} cannot be used for PIV "
                           f"({type(e).__name__}: {e}); skipped")
                continue
            found.append(Found(device, serial, version))
        self._found = found
        return found

    def candidates(self) -> list[Found]:
        """With a serial asked for, that YubiKey (if plugged in); else every one."""
        found = self.all()
        if self.serial is not None:
            return [f for f in found if f.serial == self.serial]
        return found

    def target(self) -> Found:
        """The one YubiKey an operation acts on: `--serial`'s, or the only one plugged in."""
        found = self.all()
        if self.serial is not None:
            for f in found:
                if f.serial == self.serial:
                    return f
            others = ", ".join(str(f.serial) for f in found) or "none"
            raise YubiKeyError(f"no YubiKey with serial {self.serial} is plugged in "
                               f"(plugged in: {others})")
        if not found:
            raise YubiKeyError("no YubiKey is plugged in (or pcscd is not running); plug one in")
        if len(found) > 1:
            serials = ", ".join(str(f.serial) for f in found)
            raise YubiKeyError(f"several YubiKeys are plugged in (serials {serials}); choose one "
                               f"with {SERIAL_VARIABLE} (or --serial, where the command has it)")
        return found[0]

    def by_serial(self, serial: int) -> Found:
        for found in self.all():
            if found.serial == serial:
                return found
        raise YubiKeyError(f"YubiKey {serial} is no longer plugged in")  # pragma: no cover
