"""`hsmsign token ...`: the PKCS#11 tokens present."""

from __future__ import annotations

import click

from hsmsign.cli.context import common_options, pass_app


@click.group()
def token():
    """PKCS#11 tokens present."""


@token.command("list")
@common_options
@pass_app
def list_(app):
    """Every token in the configured module, or in every well-known module."""
    from hsmsign.config import load_token_config
    from hsmsign.keystore.pkcs11 import list_tokens

    tokens = list_tokens(load_token_config(app.home, module=app.pkcs11_module))
    if app.json:
        app.emit_json([t.to_json() for t in tokens])
        return
    app.table(["LABEL", "SERIAL", "MANUFACTURER", "MODEL", "SLOT", "MODULE"],
              [[t.label or "(not initialized)", t.serial, t.manufacturer, t.model, str(t.slot), t.module] for t in tokens],
              "No token present. Plug one in, or set HSMSIGN_PKCS11_MODULE.")
