"""The signing service under test: a SoftHSM token of its own (so that a test may pull it out),
a home with keys on it and in files, and the real `hsmsign serve` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata, Snapshot, Targets, Timestamp

from conftest import SO_PIN, SOFTHSM_MODULE, TOKEN_PIN, Cli, clean_environ, passphrase_env

LABEL = "hsmsign-service"


@dataclass
class ServiceHome:
    """A home whose root and targets keys are files and snapshot/timestamp keys on a token."""

    root: Path
    home: Path
    env: dict[str, str]
    keys: dict[str, str]  # role -> key ID

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    def cli(self, **extra: str) -> Cli:
        return Cli(self.home, {**self.env, **extra})


def make_service_home(root: Path) -> ServiceHome:
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin",
                    TOKEN_PIN, "--so-pin", SO_PIN], check=True, capture_output=True,
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    env = clean_environ(SOFTHSM2_CONF=str(conf), HSMSIGN_PKCS11_MODULE=SOFTHSM_MODULE,
                        HSMSIGN_TOKEN_LABEL=LABEL, HSMSIGN_PIN=TOKEN_PIN, **passphrase_env())
    home = ServiceHome(root, root / "home", env, {})
    cli = home.cli()
    for role, store in (("root", "file"), ("targets", "file"), ("snapshot", "token"),
                        ("timestamp", "token")):
        cli("key", "generate", role, "--store", store)
    for record in json.loads(cli("key", "list", "--json").stdout):
        home.keys[record["role"]] = record["keyid"]
    return home


def write_policy(path: Path, *clients: dict) -> Path:
    lines = []
    for client in clients:
        lines.append("[[client]]")
        lines.extend(f"{k} = {json.dumps(v) if not isinstance(v, Path) else json.dumps(str(v))}"
                     for k, v in client.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Service:
    """`hsmsign serve` in a subprocess; stderr is collected as it comes."""

    proc: subprocess.Popen
    url: str
    audit: Path
    stderr: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.stderr)

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not say {needle!r}:\n{self.text()}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def rss_kib(self) -> int:
        """The resident memory of the service process (the CLI's python)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def start_service(home: ServiceHome, policy: Path, listen: str, *, audit: Path,
                  extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Service:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsmsign", "--home", str(home.home), "serve", "--listen", listen,
         "--policy", str(policy), "--audit-log", str(audit), *extra],
        env={**home.env, **(env or {})}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    service = Service(proc, "", audit)

    def collect() -> None:
        for line in proc.stderr:
            service.stderr.append(line)

    threading.Thread(target=collect, daemon=True).start()
    try:
        service.wait_for("listening on ")
    except AssertionError:
        service.stop()
        raise
    line = next(l for l in service.stderr if "listening on " in l)
    service.url = line.split("listening on ", 1)[1].split()[0]
    return service


def expires(days: float = 1) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


def signed_of(role: str, *, version: int = 1, days: float = 1) -> dict:
    """The signed part of fresh metadata for `role`."""
    cls = {"timestamp": Timestamp, "snapshot": Snapshot}.get(role, Targets)
    return Metadata(cls(version=version, expires=expires(days))).signed.to_dict()


def tuf_key(entry: dict) -> SSlibKey:
    return SSlibKey.from_dict(entry["keyid"], dict(entry["public_key"]))


@pytest.fixture(scope="session")
def service_home(tmp_path_factory) -> ServiceHome:
    return make_service_home(tmp_path_factory.mktemp("service"))


def raw_request(url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict]:
    """One request on a new connection, the body exactly as given."""
    from hsmsign.service.client import _UnixConnection

    assert url.startswith("unix:")
    conn = _UnixConnection(url[len("unix:"):], timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def request_bytes(body: dict | bytes, path: str = "/v1/sign") -> bytes:
    """A whole HTTP/1.1 POST, for clients that write raw bytes (slow, cut short, pipelined)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def read_response(sock) -> tuple[int, dict]:
    """One response from a raw socket (Content-Length framing, as aiohttp answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return status, json.loads(body[:length])


def unix_socket(url: str, timeout: float = 30):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(url[len("unix:"):])
    return sock
