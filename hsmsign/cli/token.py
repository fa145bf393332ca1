"""`hsmsign token ...`: the PKCS#11 tokens and YubiKeys present; YubiKey setup and reset."""

from __future__ import annotations

import sys

import click

from hsmsign.cli.context import common_options, pass_app


@click.group()
def token():
    """PKCS#11 tokens and YubiKeys present; set up or reset a YubiKey."""


def _yubikeys(app, serial: str | None):
    """The YubiKey store for this command, with `--serial` and messages to stderr."""
    from hsmsign.keystore.yubikey import parse_serial

    store = app.stores.yubikey
    store.notify = app.note
    if serial is not None:
        store.serial = parse_serial(serial)
    return store


@token.command("list")
@click.option("--serial", help="Only the token or YubiKey with this serial number.")
@common_options
@pass_app
def list_(app, serial):
    """Every token in the configured module (or every well-known module), and every YubiKey."""
    from hsmsign.config import load_token_config
    from hsmsign.errors import HsmsignError
    from hsmsign.keystore.pkcs11 import list_tokens
    from hsmsign.keystore.yubikey import YubiKeyError

    config = load_token_config(app.home, module=app.pkcs11_module)
    tokens = list_tokens(config)
    if serial is not None:
        tokens = [t for t in tokens if t.serial == serial.strip()]
    yubikeys, unreachable = [], None
    if config.enabled:
        store = _yubikeys(app, serial)
        store.notify = None  # the warnings are printed below, once
        try:
            yubikeys = store.info()
        except YubiKeyError as e:
            unreachable = str(e)
    if serial is not None and not tokens and not yubikeys:
        raise HsmsignError(f"no token or YubiKey with serial {serial} is present"
                           + (f" ({unreachable})" if unreachable else ""))
    if unreachable:
        app.note(f"warning: YubiKeys not listed: {unreachable}")
    if app.json:
        app.emit_json([t.to_json() for t in tokens] + [y.to_json() for y in yubikeys])
        return
    if tokens or not yubikeys:
        from hsmsign.keystore.pkcs11 import remote_address

        address = remote_address(config.module) if config.module else None
        app.table(["LABEL", "SERIAL", "MANUFACTURER", "MODEL", "SLOT", "MODULE"],
                  [[t.label or "(not initialized)", t.serial, t.manufacturer, t.model, str(t.slot), t.module] for t in tokens],
                  f"No token reached through the p11-kit server {address}: is it running, and its "
                  "socket forwarded here?" if address else
                  "No token present. Plug one in, or set HSMSIGN_PKCS11_MODULE.")
    if yubikeys:
        rows = []
        for y in yubikeys:
            tries = (f"{y.pin_tries}/{y.pin_tries_total}" if y.pin_tries_total
                     else str(y.pin_tries))
            head = [str(y.serial), y.firmware, y.form_factor, tries]
            for s in y.slots or [None]:
                rows.append(head + ([s.slot, s.key_type or "?", s.keyid or "", s.role or "",
                                     s.pin_policy or "?", s.touch_policy or "?"]
                                    if s else ["(no keys)", "", "", "", "", ""]))
        app.table(["YUBIKEY", "FIRMWARE", "FORM FACTOR", "PIN TRIES", "SLOT", "KEY TYPE", "KEY ID",
                   "ROLE", "PIN POLICY", "TOUCH POLICY"], rows, "")
        from hsmsign.keystore.yubikey import defaults_warning

        for y in yubikeys:
            if y.factory_defaults:
                app.note(f"warning: {defaults_warning(y.serial, y.factory_defaults)}")


@token.command()
@click.option("--serial", help="The YubiKey to set up when several are plugged in.")
@common_options
@pass_app
def setup(app, serial):
    """Replace a YubiKey's factory PIN, PUK and management key in one guided step.

    The current PIN comes from $HSMSIGN_PIN and the current PUK from $HSMSIGN_PUK, the new ones
    from $HSMSIGN_NEW_PIN and $HSMSIGN_NEW_PUK, else from prompts (new values asked twice). The
    new management key is random and stored on the YubiKey, protected by the PIN.
    """
    store = _yubikeys(app, serial)
    found = store.target()
    app.note(f"Setting up {store.describe(found)}")
    done = store.setup()
    if app.json:
        app.emit_json({"serial": found.serial, "done": done})
        return
    for step in done:
        app.note(f"  {step}")
    app.note("Keep the new PIN and PUK safe: hsmsign cannot recover them.")


@token.command()
@click.option("--serial", help="The YubiKey to reset when several are plugged in.")
@common_options
@pass_app
def reset(app, serial):
    """Erase a YubiKey's PIV keys and certificates and restore its factory PIN, PUK and
    management key (after typing its serial number to confirm)."""
    from hsmsign.errors import HsmsignError

    store = _yubikeys(app, serial)
    found = store.target()
    if not sys.stdin.isatty():
        raise HsmsignError(f"`token reset` erases every PIV key on YubiKey {found.serial} and needs "
                           "its serial number typed at a terminal; nothing was changed")
    held = store.keys_on(found.serial)
    for r in held:  # what is lost, said before it is: a root key in use is the worst case
        app.note(f"  slot key {r.keyid} ({r.role}, {r.location})")
    typed = click.prompt(f"This erases every PIV key and certificate on {store.describe(found)} "
                         f"({len(held)} key(s), listed above) and restores the factory PIN, PUK "
                         "and management key.\n"
                         "Type its serial number to confirm", default="", show_default=False,
                         err=True)
    if typed.strip() != str(found.serial):
        raise HsmsignError("the serial number typed does not match; nothing was changed")
    serial_reset = store.reset()
    if app.json:
        app.emit_json({"serial": serial_reset, "reset": True})
        return
    app.note(f"YubiKey {serial_reset} is reset: PIN 123456, PUK 12345678, default management "
             "key; run `hsmsign token setup` before using it")
