"""Running the service: where it listens (a Unix socket, or HTTPS with mutual TLS), start-up
checks before the first connection, and signals: SIGTERM/SIGINT stop accepting, let the requests
in flight finish and exit; SIGHUP reloads the policy, keeping the old one if the new one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from hsmsign.errors import HsmsignError
from hsmsign.keystore.stores import KeyStores
from hsmsign.service.acceptance import PublishedVersions
from hsmsign.service.app import State, make_app
from hsmsign.service.audit import AuditLog
from hsmsign.service.keyring import KeyRing
from hsmsign.service.metrics import Metrics
from hsmsign.service.policy import load_policy

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0
SOCKET_MODE = 0o666  # who may sign is the policy's (SO_PEERCRED); the directory may restrict more


class ListenError(HsmsignError):
    """The service cannot listen where it was told to."""


@dataclass(frozen=True)
class Listen:
    """`unix:PATH` or `https://HOST:PORT` (the form HSMSIGN_SIGNER_URL takes too)."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Listen:
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if not path:
                raise ListenError(f"{text!r}: give the socket's path, e.g. unix:/run/hsmsign/sock")
            return cls(path=Path(path))
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "https" or not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ListenError(f"{text!r} is not unix:PATH or https://HOST:PORT")
        return cls(host=parts.hostname, port=port)

    def describe(self, port: int | None = None) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in (self.host or "") else self.host
        return f"https://{host}:{port or self.port}"


def tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS 1.2+ that requires a client certificate issued by `client_ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(cert), str(key))
    return context


class Service:
    """The service: built and checked by `__init__` (errors before anything listens), run by
    `run`."""

    def __init__(self, stores: KeyStores, policy_path: Path, listen: Listen, audit_path: Path,
                 tls: ssl.SSLContext | None = None):
        if listen.path is None and tls is None:
            raise ListenError("https needs --tls-cert, --tls-key and --client-ca (mutual TLS)")
        self.listen = listen
        self.tls = tls
        self.policy_path = Path(policy_path)
        policy = load_policy(self.policy_path)
        keyring = KeyRing(stores)
        try:
            keyring.use(keyring.load(policy))
            audit = AuditLog(audit_path)
        except BaseException:
            keyring.close()
            raise
        self.state = State(policy, keyring, audit, Metrics(), PublishedVersions())
        self._stop = asyncio.Event()
        self.port: int | None = listen.port

    async def run(self, ready: Callable[[Service], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(make_app(self.state), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = await self._site(runner)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
            self._record({"request": "start", "result": "listening",
                                "listen": self.listen.describe(self.port),
                                "policy": str(self.policy_path),
                                "keyids": sorted(self.state.keyring.keys)})
            if ready is not None:
                ready(self)
            await self._stop.wait()
            logger.info("stopping: no new connections; finishing the requests in flight")
            await site.stop()  # stop listening; connections open now go on
            await self._drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await runner.cleanup()  # stops listening, waits for requests in flight
            self._record({"request": "stop", "result": "stopped"})
            await self.state.audit.drain()
            if self.listen.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.listen.path.unlink()

    async def _drain(self) -> None:
        """Wait for the requests in flight (a body still arriving included, up to the time a
        client has to send one) before aiohttp closes the connections."""
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while self.state.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()

    async def _site(self, runner: web.AppRunner):
        if self.listen.path is not None:
            path = self.listen.path
            _remove_stale_socket(path)
            site = web.UnixSite(runner, str(path), shutdown_timeout=DRAIN_SECONDS)
            await site.start()
            os.chmod(path, SOCKET_MODE)
            return site
        site = web.TCPSite(runner, self.listen.host, self.listen.port, ssl_context=self.tls,
                           shutdown_timeout=DRAIN_SECONDS)
        try:
            await site.start()
        except OSError as e:
            raise ListenError(f"cannot listen on {self.listen.describe()} ({e.strerror})") from None
        server = getattr(site, "_server", None)  # the port the system chose for port 0
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        return site

    async def reload(self) -> None:
        """SIGHUP: the policy file again; on any error the old policy stays, and the log says why."""
        try:
            policy = load_policy(self.policy_path)
            await self.state.keyring.reload(policy)
        except HsmsignError as e:
            logger.error("policy not reloaded, the old one stays in force: %s", e)
            self._record({"request": "reload", "result": "refused", "reason": str(e)})
            return
        self.state.policy = policy
        logger.info("policy reloaded from %s: %d clients, %d keys", self.policy_path,
                    len(policy.clients), len(self.state.keyring.keys))
        self._record({"request": "reload", "result": "reloaded",
                            "keyids": sorted(self.state.keyring.keys)})

    def _record(self, entry: dict) -> None:
        try:
            self.state.audit.record(entry)
        except HsmsignError as e:
            logger.error("%s", e)

    def close(self) -> None:
        self.state.keyring.close()
        self.state.audit.close()


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a service that is gone is removed; a live one, or a file that is not a
    socket, is an error (never deleted)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket; remove it or listen elsewhere")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink()
        return
    finally:
        probe.close()
    raise ListenError(f"another service is listening on {path}; stop it first")
