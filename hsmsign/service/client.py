"""The service's client: signer URIs for python-tuf tools, and the CLI's remote keys.

    hsmsign+unix:/run/hsmsign/sock#KEYID
    hsmsign+https://signer.example.com:8443/KEYID

Importing this module registers both schemes with securesystemslib, so that

    Signer.from_priv_key_uri("hsmsign+unix:/run/hsmsign/sock#" + keyid, public_key)

signs through the service. Over HTTPS the client certificate, its key and the CA that issued
the service's certificate come from HSMSIGN_SIGNER_CERT, HSMSIGN_SIGNER_KEY, HSMSIGN_SIGNER_CA.
The client keeps one connection open and checks every signature against the public key
before handing it on, so a signature over anything but the caller's bytes never leaves here.

It uses the standard library's http.client: a command that signs through the service loads
no HTTP stack.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, Key, SecretsHandler, Signature, Signer

from hsmsign.errors import HsmsignError
from hsmsign.keystore.signers import KeyIdSigner
from hsmsign.service.errors import RemoteError

UNIX_SCHEME = "hsmsign+unix"
HTTPS_SCHEME = "hsmsign+https"
URL_VARIABLE = "HSMSIGN_SIGNER_URL"
TLS_VARIABLES = ("HSMSIGN_SIGNER_CERT", "HSMSIGN_SIGNER_KEY", "HSMSIGN_SIGNER_CA")
TIMEOUT_SECONDS = 60.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ServiceClient:
    """HTTP to one service (`unix:PATH` or `https://HOST:PORT`), one kept-alive connection."""

    def __init__(self, url: str, environ: Mapping[str, str] | None = None,
                 timeout: float = TIMEOUT_SECONDS):
        environ = os.environ if environ is None else environ
        self.url = url
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        if url.startswith("unix:") and len(url) > len("unix:"):
            path = url[len("unix:"):]
            self._connect = lambda: _UnixConnection(path, timeout)
            return
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "https" or not parts.hostname or port is None:
            raise HsmsignError(f"signing service {url!r}: give unix:PATH or https://HOST:PORT "
                               f"(as in {URL_VARIABLE})")
        context = _client_tls(environ)
        host = parts.hostname
        self._connect = lambda: http.client.HTTPSConnection(host, port, timeout=timeout,
                                                            context=context)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """The status and JSON answer; one retry on a fresh connection if the kept one closed."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with self._lock:
            for attempt in (1, 2):
                if self._connection is None:
                    self._connection = self._connect()
                try:
                    self._connection.request(method, path, body=data, headers=headers)
                    response = self._connection.getresponse()
                    raw = response.read()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError,
                        ConnectionResetError) as e:
                    self.close_connection()
                    if attempt == 2:
                        raise RemoteError(f"the signing service {self.url} closed the "
                                          f"connection ({type(e).__name__})", 0) from None
                except (OSError, ssl.SSLError, http.client.HTTPException) as e:
                    self.close_connection()
                    raise RemoteError(f"cannot reach the signing service {self.url} ({e}); is it "
                                      f"running, and is {URL_VARIABLE} right?", 0) from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        return response.status, answer

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        status, answer = self.request(method, path, body)
        if status != 200:
            raise RemoteError(f"the signing service {self.url} refused ({status}): "
                              f"{answer.get('error', 'no reason given')}", status)
        return answer

    def sign(self, keyid: str, signed: dict) -> str:
        sig = self.call("POST", "/v1/sign", {"keyid": keyid, "signed": signed}).get("sig")
        if not isinstance(sig, str):
            raise RemoteError(f"the signing service {self.url} answered without a signature", 200)
        return sig

    def keys(self) -> list[dict]:
        return list(self.call("GET", "/v1/keys").get("keys", []))

    def close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _client_tls(environ: Mapping[str, str]) -> ssl.SSLContext:
    cert, key, ca = (environ.get(name) for name in TLS_VARIABLES)
    if not (cert and key and ca):
        missing = [n for n, v in zip(TLS_VARIABLES, (cert, key, ca)) if not v]
        raise HsmsignError(f"a signing service over https needs a client certificate: set "
                           f"{', '.join(missing)}")
    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise HsmsignError(f"cannot use the client certificate files ({e}); check "
                           f"{', '.join(TLS_VARIABLES)}") from None
    return context


class RemoteSigner(KeyIdSigner):
    """Signs through the service; `public_key` checks every signature it returns."""

    def __init__(self, client: ServiceClient, keyid: str, public_key: Key):
        if public_key.keyid != keyid:
            raise HsmsignError(f"public key {public_key.keyid} does not belong to key {keyid}")
        self.client = client
        super().__init__(keyid, public_key)

    def sign(self, payload: bytes) -> Signature:
        # The service signs only metadata, which it parses: send the signed part as JSON.
        try:
            signed = json.loads(payload)
        except ValueError:
            raise HsmsignError("the signing service signs TUF metadata only; this payload is "
                               "not the JSON of a metadata's signed part") from None
        signature = Signature(self.keyid, self.client.sign(self.keyid, signed))
        try:
            self._public_key.verify_signature(signature, payload)
        except Exception:  # noqa: BLE001 - a signature over other bytes is refused
            raise HsmsignError(f"the signature the service made with key {self.keyid[:7]} does "
                               "not verify over these bytes; nothing was signed") from None
        return signature

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> RemoteSigner:
        url, keyid = parse_uri(priv_key_uri)
        return cls(ServiceClient(url), keyid, public_key)


def parse_uri(uri: str) -> tuple[str, str]:
    """(service URL in HSMSIGN_SIGNER_URL's form, key ID) of a signer URI."""
    if uri.startswith(UNIX_SCHEME + ":"):
        path, _, keyid = uri[len(UNIX_SCHEME) + 1:].partition("#")
        if path and keyid:
            return f"unix:{path}", keyid
    elif uri.startswith(HTTPS_SCHEME + "://"):
        parts = urlsplit(uri[len("hsmsign+"):])
        keyid = parts.path.strip("/")
        if parts.netloc and keyid and "/" not in keyid:
            return f"https://{parts.netloc}", keyid
    raise ValueError(f"not an hsmsign service key URI: {uri!r} (use {UNIX_SCHEME}:/path#KEYID "
                     f"or {HTTPS_SCHEME}://HOST:PORT/KEYID)")


SIGNER_FOR_URI_SCHEME[UNIX_SCHEME] = RemoteSigner
SIGNER_FOR_URI_SCHEME[HTTPS_SCHEME] = RemoteSigner


class RemoteKeys:
    """The keys a service grants this client, for the CLI's `SigningService` (`remote=`)."""

    def __init__(self, url: str, environ: Mapping[str, str] | None = None):
        self.client = ServiceClient(url, environ)
        self._keyids: set[str] | None = None

    def keyids(self) -> set[str]:
        if self._keyids is None:
            self._keyids = {str(k.get("keyid")) for k in self.client.keys()}
        return self._keyids

    def signer(self, keyid: str, public_key: Key) -> Signer:
        return RemoteSigner(self.client, keyid, public_key)

    def close(self) -> None:
        self.client.close_connection()


def remote_keys_from_environment(environ: Mapping[str, str] | None = None) -> RemoteKeys | None:
    environ = os.environ if environ is None else environ
    url = environ.get(URL_VARIABLE)
    return RemoteKeys(url, environ) if url else None
