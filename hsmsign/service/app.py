"""The HTTP API (aiohttp): who is calling, what they may sign, and the answers.

    POST /v1/sign   {"keyid": KEYID, "signed": {...}} -> 200 {"keyid": KEYID, "sig": HEX}
    GET  /v1/keys   the caller's keys: [{"keyid", "role", "gun", "public_key"}]
    GET  /healthz   the process answers
    GET  /readyz    every store the policy uses answers and is logged in (else 503)
    GET  /metrics   Prometheus text format

Every error is `{"error": "one line saying what and what to do"}` with 400 (malformed or not
acceptable), 401 (no client of the policy is this peer), 403 (not granted), 404 (unknown key),
413 (over 10 MiB), 503 (store unavailable). Every /v1 request, answered or refused, is a line
in the audit log, written and fsynced, before its answer is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
import weakref
from dataclasses import dataclass

from aiohttp import web

from hsmsign.service.acceptance import PublishedVersions, accept
from hsmsign.service.audit import AuditLog, AuditLogError
from hsmsign.service.errors import (
    Malformed,
    NotGranted,
    ServiceError,
    StoreUnavailable,
    TooLarge,
    Unauthenticated,
    UnknownKey,
)
from hsmsign.service.keyring import KeyRing
from hsmsign.service.metrics import CONTENT_TYPE, Metrics
from hsmsign.service.policy import Client, Peer, Policy

logger = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024
BODY_SECONDS = 30.0  # a client has this long to send its body (slow clients hold nothing else)
_PEERCRED = struct.Struct("3i")


@dataclass
class State:
    """What the handlers share; `policy` and `keyring.keys` are replaced whole on reload."""

    policy: Policy
    keyring: KeyRing
    audit: AuditLog
    metrics: Metrics
    published: PublishedVersions
    in_flight: int = 0  # requests whose handler runs (SIGTERM waits for them)


# A connection's peer is fixed when it connects (SO_PEERCRED gives the credentials of the
# connect(), a TLS certificate its handshake): asked once per connection, not per request.
_PEERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def peer_of(request: web.Request) -> Peer:
    """The peer of the request's connection: its certificate's names, or its uid/gid."""
    transport = request.transport
    if transport is None:
        raise Unauthenticated("the connection closed")
    peer = _PEERS.get(transport)
    if peer is None:
        peer = _PEERS[transport] = _connection_peer(transport)
    return peer


def _connection_peer(transport) -> Peer:
    cert = transport.get_extra_info("peercert")
    if cert:
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn
                 if key == "commonName"]
        names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
        return Peer(names=tuple(names))
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        pid, uid, gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        return Peer(uid=uid, gid=gid, pid=pid)
    raise Unauthenticated("no client certificate; connect with mutual TLS")


class _FloatInBody(Exception):
    pass


def _no_float(text: str):
    raise _FloatInBody(text)


def _error(e: ServiceError) -> web.Response:
    return web.json_response({"error": str(e)}, status=e.status)


class Api:
    def __init__(self, state: State):
        self.state = state
        self._signatures: dict[tuple[str, str], object] = {}

    def client(self, request: web.Request) -> tuple[Client, Peer]:
        peer = peer_of(request)
        client = self.state.policy.client_for(peer)
        if client is None:
            raise Unauthenticated(f"no client in the service's policy is {peer.describe()}; "
                                  "ask its operator to add one")
        return client, peer

    async def sign(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        entry: dict = {"request": "sign", "client": None, "keyid": None, "role": None,
                       "version": None, "sha256": None}
        metrics = self.state.metrics
        try:
            client, peer = self.client(request)
            entry.update(client=client.name, peer=peer.describe())
            body = await self._body(request)
            keyid, signed = body.get("keyid"), body.get("signed")
            if not isinstance(keyid, str) or "signed" not in body:
                raise Malformed('the body must be {"keyid": KEYID, "signed": {...}}')
            entry["keyid"] = keyid
            key = self.state.keyring.keys.get(keyid)
            if key is None:
                raise UnknownKey(f"the service holds no key {keyid}; GET /v1/keys lists yours")
            entry["role"] = key.record.role
            if not client.grants(key.record):
                raise NotGranted(f"client {client.name!r} is not granted key {keyid[:7]} "
                                 f"({key.record.role}); ask the service's operator")
            accepted = accept(signed, key.record, client, published=self.state.published)
            entry.update(version=accepted.version, sha256=accepted.sha256)
            sig = await self.state.keyring.sign(key, accepted.payload)
            line = self.state.audit.record({**entry, "result": "signed"})
            await self.state.audit.durable(line)  # no signature out before its record is on disk
        except ServiceError as e:
            await self._refused(entry, e)
            return _error(e)
        counter = self._signatures.get((keyid, client.name))
        if counter is None:  # labels() takes a lock and builds a key: once per pair
            counter = self._signatures[keyid, client.name] = metrics.signatures.labels(
                keyid, client.name)
        counter.inc()
        metrics.latency.observe(time.perf_counter() - started)
        return web.json_response({"keyid": keyid, "sig": sig})

    async def _refused(self, entry: dict, e: ServiceError) -> None:
        logger.warning("refused %s for %s: %s", entry.get("keyid"), entry.get("client"), e)
        if isinstance(e, StoreUnavailable):
            self.state.metrics.errors.labels("store_unavailable").inc()
        self.state.metrics.refusals.labels(e.reason, entry.get("client") or "").inc()
        await self.state.audit.durable(
            self.state.audit.record({**entry, "result": e.reason, "reason": str(e)}))

    async def _body(self, request: web.Request) -> dict:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise TooLarge(f"the body is over {MAX_BODY // (1024 * 1024)} MiB; sign smaller "
                           "metadata")
        try:
            if request.content.is_eof():  # all there already (the usual small body)
                raw = await request.read()
            else:
                async with asyncio.timeout(BODY_SECONDS):
                    raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"the body is over {MAX_BODY // (1024 * 1024)} MiB; sign smaller "
                           "metadata") from None
        except TimeoutError:
            raise Malformed(f"the body did not arrive within {BODY_SECONDS:g} s") from None
        try:
            body = json.loads(raw, parse_float=_no_float, parse_constant=_no_float)
        except _FloatInBody:
            raise Malformed("the body holds a number with a fraction or exponent; TUF metadata "
                            "has none (canonical JSON cannot encode them)") from None
        except (ValueError, UnicodeDecodeError):
            raise Malformed("the body is not JSON; send {\"keyid\": ..., \"signed\": ...}") from None
        if not isinstance(body, dict):
            raise Malformed('the body must be a JSON object {"keyid": ..., "signed": ...}')
        return body

    async def keys(self, request: web.Request) -> web.Response:
        entry: dict = {"request": "keys", "client": None}
        try:
            client, peer = self.client(request)
        except ServiceError as e:
            await self._refused(entry, e)
            return _error(e)
        mine = [key.to_json() for key in self.state.keyring.keys.values()
                if client.grants(key.record)]
        await self.state.audit.durable(self.state.audit.record(
            {**entry, "client": client.name, "peer": peer.describe(), "result": "listed",
             "keyids": [k["keyid"] for k in mine]}))
        return web.json_response({"keys": mine})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = await self.state.keyring.probe()
        for kind, problem in problems.items():
            self.state.metrics.store_up.labels(kind).set(0 if problem else 1)
        down = {kind: problem for kind, problem in problems.items() if problem}
        if down:
            return web.json_response(
                {"error": "; ".join(f"the {kind} store does not answer ({problem})"
                                    for kind, problem in sorted(down.items())),
                 "stores": {k: problem or "ok" for k, problem in problems.items()}}, status=503)
        return web.json_response({"status": "ready", "stores": {k: "ok" for k in problems}})

    async def metrics(self, request: web.Request) -> web.Response:
        for kind, state in self.state.keyring.states.items():
            self.state.metrics.store_up.labels(kind).set(1 if state.up else 0)
        return web.Response(body=self.state.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE})


def in_flight(state: State):
    @web.middleware
    async def middleware(request: web.Request, handler):
        state.in_flight += 1
        try:
            return await handler(request)
        finally:
            state.in_flight -= 1
    return middleware


def json_errors(metrics: Metrics):
    @web.middleware
    async def middleware(request: web.Request, handler):
        """aiohttp's own errors (unknown path, wrong method) and failures as `{"error": ...}`;
        nothing is signed without its audit line, so an unwritable log answers 503."""
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return web.json_response({"error": f"{e.reason}: {request.method} {request.path}"},
                                     status=e.status)
        except AuditLogError as e:
            metrics.errors.labels("audit_log").inc()
            return web.json_response({"error": str(e)}, status=503)
        except Exception as e:  # noqa: BLE001 - logged; the client gets one line, never a trace
            metrics.errors.labels("internal").inc()
            logger.exception("internal error in %s %s", request.method, request.path)
            return web.json_response({"error": f"internal error ({type(e).__name__}); see the "
                                               "service's log"}, status=500)
    return middleware


def make_app(state: State) -> web.Application:
    api = Api(state)
    # client_max_size one byte over the limit: `_body` answers 413 in its own words.
    app = web.Application(client_max_size=MAX_BODY + 1, middlewares=[in_flight(state), json_errors(state.metrics)])
    app.router.add_post("/v1/sign", api.sign)
    app.router.add_get("/v1/keys", api.keys)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    return app
