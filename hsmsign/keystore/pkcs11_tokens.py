"""PKCS#11 modules and their tokens: loading a module, the slots with a token that answers,
what `token list` shows, a token (or a network HSM's server) that stops answering, and what the
token's PIN flags allow. No session is opened here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hsmsign.config import TokenConfig
from hsmsign.errors import (  # TokenError, PinPolicyError: importable from here as before
    PinPolicyError,
    TokenError,
)


def load_module(path: str):
    import pkcs11

    if not os.path.exists(path):
        raise TokenError(
            f"PKCS#11 module {path} does not exist; set HSMSIGN_PKCS11_MODULE to the path of "
            "your token's module (e.g. /usr/lib/softhsm/libsofthsm2.so)"
        )
    try:
        return pkcs11.lib(path)
    except pkcs11.PKCS11Error as e:
        reason = str(e).rsplit(": ", 1)[-1]
        raise TokenError(
            f"{path} is not a usable PKCS#11 module ({reason}); set HSMSIGN_PKCS11_MODULE to "
            "your token's module"
        ) from None


P11_KIT_CLIENT = "p11-kit-client.so"


def remote_address(module: str) -> str | None:
    """The server a PKCS#11 remoting module talks to, or None for a local module.

    p11-kit's client module forwards every call to a `p11-kit server` (a network HSM's token
    exported over a Unix socket, often forwarded over SSH); without P11_KIT_SERVER_ADDRESS it
    uses p11-kit's default socket, $XDG_RUNTIME_DIR/p11-kit/pkcs11.
    """
    if os.path.basename(module) != P11_KIT_CLIENT:
        return None
    default = f"unix:path={os.environ.get('XDG_RUNTIME_DIR', '/run/user/' + str(os.getuid()))}/p11-kit/pkcs11"
    return os.environ.get("P11_KIT_SERVER_ADDRESS") or default


def module_place(module: str) -> str:
    """Where a module's tokens are, for messages: the module, and the server for a remote one."""
    address = remote_address(module)
    return module if address is None else f"{module} (p11-kit server {address})"


def present_slots(lib, module: str) -> list:
    """Slots with a token; a module that cannot enumerate them (e.g. no pcscd) is an error."""
    import pkcs11

    try:
        slots = list(lib.get_slots(token_present=True))
        return [slot for slot in slots if answers(slot)]
    except pkcs11.PKCS11Error as e:
        address = remote_address(module)
        if address is not None:
            raise TokenError(
                f"cannot reach the p11-kit server {address} through {module} "
                f"({type(e).__name__}); is the server running and its socket forwarded here?"
            ) from None
        raise TokenError(
            f"PKCS#11 module {module} cannot list its slots ({type(e).__name__}); is the "
            "reader service (pcscd) running and the device plugged in?"
        ) from None


def answers(slot) -> bool:
    """A slot whose token can be read (one being removed right now cannot)."""
    try:
        slot.get_token()
        return True
    except Exception as e:  # noqa: BLE001
        if is_gone(e):
            return False
        raise


def token_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().rstrip("\x00").strip()


GONE = ("DeviceRemoved", "TokenNotPresent", "DeviceError", "GeneralError",
         "SessionHandleInvalid", "SessionClosed", "ObjectHandleInvalid", "SlotIDInvalid")


def token_gone(error: Exception, doing: str, module: str | None = None) -> TokenError:
    """The error for a token that vanished (unplugged, module restarted, a network HSM's
    server gone) while in use."""
    address = remote_address(module) if module else None
    if address is not None:
        return TokenError(f"the p11-kit server {address} stopped answering while {doing} "
                          f"({type(error).__name__}); nothing was written: check that the "
                          "server runs and is reachable, then run the command again")
    return TokenError(f"the token stopped answering while {doing} ({type(error).__name__}: "
                      "was it removed?); plug it in and run the command again")


def is_gone(error: Exception) -> bool:
    return type(error).__name__ in GONE


def flag_names(flags: int) -> list[str]:
    from pkcs11 import TokenFlag

    return [f.name for f in TokenFlag if f.value and flags & f.value == f.value]


@dataclass(frozen=True)
class TokenInfo:
    module: str
    slot: int
    label: str
    serial: str
    manufacturer: str
    model: str
    flags: list[str]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def list_tokens(config: TokenConfig) -> list[TokenInfo]:
    """Every token present in the configured module, or in every well-known module."""
    found = []
    for module in config.candidate_modules():
        try:
            lib = load_module(module)
            slots = present_slots(lib, module)
        except TokenError:
            if config.module:
                raise
            continue
        for slot in slots:
            token = slot.get_token()
            found.append(TokenInfo(
                module=module,
                slot=slot.slot_id,
                label=token_text(token.label),
                serial=token_text(token.serial),
                manufacturer=token_text(token.manufacturer_id),
                model=token_text(token.model),
                flags=flag_names(int(token.flags)),
            ))
    return found


def pin_refusal(flags: int, token: str, force: bool) -> str | None:
    """Why a login must not be tried now, or None. The token's own flags decide."""
    from pkcs11 import TokenFlag

    if flags & TokenFlag.USER_PIN_LOCKED:
        return (f"the user PIN of token {token} is locked; unblock it with the SO PIN "
                "(e.g. `pkcs11-tool --init-pin --login --login-type so`) before using it")
    if flags & TokenFlag.USER_PIN_FINAL_TRY and not force:
        return (f"token {token} has one PIN try left and a wrong PIN would lock it; "
                "re-run with --force if you are sure of the PIN")
    return None


def pin_tries_left(flags: int) -> int | None:
    """The tries left as far as the token's flags tell: 0 locked, 1 final try, else unknown
    (PKCS#11 has no counter, only "count low")."""
    from pkcs11 import TokenFlag

    if flags & TokenFlag.USER_PIN_LOCKED:
        return 0
    if flags & TokenFlag.USER_PIN_FINAL_TRY:
        return 1
    return None


def pin_tries_hint(flags: int) -> str:
    from pkcs11 import TokenFlag

    if flags & TokenFlag.USER_PIN_LOCKED:
        return "the PIN is now locked; unblock it with the SO PIN"
    if flags & TokenFlag.USER_PIN_FINAL_TRY:
        return "one try is left before the PIN locks"
    if flags & TokenFlag.USER_PIN_COUNT_LOW:
        return "the token reports few tries left"
    return "check HSMSIGN_PIN or type it again"
