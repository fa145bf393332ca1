"""`hsmsign serve`: the signing service for CI pipelines, and `serve verify-log`."""

from __future__ import annotations

from pathlib import Path

import click

from hsmsign.cli.context import common_options, pass_app

FILE = click.Path(dir_okay=False, path_type=Path)


@click.group(invoke_without_command=True)
@click.option("--listen", metavar="unix:PATH|https://HOST:PORT",
              help="Where to listen: a Unix socket (clients named by uid/gid) or HTTPS (mutual TLS).")
@click.option("--policy", type=FILE, help="The policy file (TOML): which client signs with which key.")
@click.option("--tls-cert", type=FILE, help="The server's certificate chain (PEM), for https.")
@click.option("--tls-key", type=FILE, help="The server certificate's private key (PEM), for https.")
@click.option("--client-ca", type=FILE, help="The CA that issues client certificates (PEM), for https.")
@click.option("--audit-log", type=FILE,
              help="The hash-chained JSON-lines audit log (default: <home>/audit.jsonl).")
@common_options
@pass_app
@click.pass_context
def serve(ctx, app, listen, policy, tls_cert, tls_key, client_ca, audit_log):
    """Serve signatures for TUF metadata to the clients the policy names (docs/service.md)."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio
    import logging

    from hsmsign.config import ensure_home
    from hsmsign.errors import HsmsignError
    from hsmsign.service.server import Listen, Service, tls_context

    if not listen or not policy:
        raise HsmsignError("give --listen unix:PATH or https://HOST:PORT, and --policy FILE")
    where = Listen.parse(listen)
    tls = None
    if where.path is None:
        if not (tls_cert and tls_key and client_ca):
            raise HsmsignError("https needs --tls-cert, --tls-key and --client-ca (mutual TLS)")
        tls = _tls(tls_context, tls_cert, tls_key, client_ca)
    elif tls_cert or tls_key or client_ca:
        raise HsmsignError("--tls-cert, --tls-key and --client-ca are for https; a Unix socket "
                           "names its clients by uid/gid")
    logging.basicConfig(level=logging.DEBUG if app.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    audit = audit_log or ensure_home(app.home) / "audit.jsonl"
    service = Service(app.stores, policy, where, audit, tls)

    def ready(running: Service) -> None:
        keys = running.state.keyring.keys
        app.note(f"hsmsign serve: listening on {running.listen.describe(running.port)} "
                 f"({len(keys)} keys, {len(running.state.policy.clients)} clients; "
                 f"audit log {audit})")
        _notify_systemd()

    try:
        asyncio.run(service.run(ready))
    finally:
        service.close()


def _tls(make, cert, key, ca):
    import ssl

    from hsmsign.errors import HsmsignError

    try:
        return make(cert, key, ca)
    except (OSError, ssl.SSLError) as e:
        raise HsmsignError(f"cannot use the TLS files ({e}); check --tls-cert, --tls-key and "
                           "--client-ca") from None


def _notify_systemd() -> None:
    """Type=notify: tell systemd the service is ready (nothing when not run by systemd)."""
    import os
    import socket

    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


@serve.command("verify-log")
@click.argument("file", type=FILE)
@common_options
@pass_app
def verify_log(app, file):
    """Check the audit log's hash chain; name the first line that breaks it."""
    from hsmsign.errors import HsmsignError
    from hsmsign.hashchain import ChainBroken
    from hsmsign.service.audit import verify_log as verify

    try:
        count, last = verify(file)
    except ChainBroken as e:
        raise HsmsignError(f"{file}: the chain breaks at line {e.index}: {e}; every line before "
                           "it is intact") from None
    if app.json:
        app.emit_json({"file": str(file), "entries": count, "last_hash": last, "ok": True})
    else:
        app.note(f"{file}: {count} entries, chain intact; last hash {last}")
