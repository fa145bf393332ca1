"""A network HSM through PKCS#11 remoting: a real `p11-kit server` exporting a SoftHSM token on
a Unix socket, reached through p11-kit's client module with nothing but HSMSIGN_PKCS11_MODULE
(and p11-kit's own P11_KIT_SERVER_ADDRESS) set. The server is started and killed by the tests.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pexpect
import pytest
from conftest import (
    SO_PIN,
    SOFTHSM_MODULE,
    TOKEN_PIN,
    Cli,
    clean_environ,
    passphrase_env,
    tree_digest,
)

# Debian's p11-kit-modules, on whichever architecture this is.
CLIENT_MODULE = next(iter(sorted(glob.glob("/usr/lib/*/pkcs11/p11-kit-client.so"))),
                     "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
NETWORK_LABEL = "network-hsm"


class P11KitServer:
    """`p11-kit server` in the foreground, in a process group of its own: it forks a process
    per client connection, and "the server goes away" means those go too."""

    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "p11kit.sock"
        self.runtime = root / "run"  # p11-kit server needs XDG_RUNTIME_DIR
        self.conf = root / "softhsm2.conf"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def prepare(self) -> None:
        (self.root / "tokens").mkdir(parents=True)
        self.runtime.mkdir(mode=0o700)
        self.conf.write_text(f"directories.tokendir = {self.root / 'tokens'}\n"
                             "objectstore.backend = file\nlog.level = ERROR\n")
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", NETWORK_LABEL,
                        "--pin", TOKEN_PIN, "--so-pin", SO_PIN], check=True, capture_output=True,
                       env={**os.environ, "SOFTHSM2_CONF": str(self.conf)})

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)  # a killed server leaves its socket behind
        self.process = subprocess.Popen(
            ["p11-kit", "server", "-f", "-n", str(self.socket), "--provider", SOFTHSM_MODULE,
             f"pkcs11:token={NETWORK_LABEL}"],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf),
                 "XDG_RUNTIME_DIR": str(self.runtime)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"p11-kit server did not start: {self.process.stderr.read()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """The machine behind the socket goes away: the server and every connection's process."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process.stderr.close()
            self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("p11-kit") is None or not os.path.exists(CLIENT_MODULE):
        pytest.fail("p11-kit and p11-kit-modules are not installed: run scripts/setup")
    server = P11KitServer(tmp_path_factory.mktemp("p11kit"))
    server.prepare()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def net_cli(home, server, softhsm) -> Cli:
    """The CLI with only the client module named (no label): the remote token is the one."""
    if server.process is None:
        server.start()
    return Cli(home, clean_environ(HSMSIGN_PKCS11_MODULE=CLIENT_MODULE,
                                   P11_KIT_SERVER_ADDRESS=server.address,
                                   HSMSIGN_PIN=TOKEN_PIN, **passphrase_env()))


def _keys(cli: Cli) -> list[dict]:
    return json.loads(cli("key", "list", "--json").stdout)


def test_token_list_generate_and_list_through_the_p11_kit_client(net_cli):
    tokens = json.loads(net_cli("token", "list", "--json").stdout)
    assert [(t["label"], t["module"]) for t in tokens] == [(NETWORK_LABEL, CLIENT_MODULE)]
    keyid = net_cli("key", "generate", "targets", "--store", "token").stdout.strip()
    (listed,) = [k for k in _keys(net_cli) if k["keyid"] == keyid]
    assert listed["store"] == "token" and listed["role"] == "targets"
    assert NETWORK_LABEL in listed["location"]


def test_a_repository_signed_on_the_network_hsm(net_cli, tmp_path):
    """Root, snapshot and timestamp keys on the remote token; python-tuf checks every step."""
    snapshot = net_cli("key", "generate", "snapshot", "--store", "token").stdout.strip()
    timestamp = net_cli("key", "generate", "timestamp", "--store", "token").stdout.strip()
    repo = tmp_path / "repo"
    net_cli("repo", "init", str(repo), "--root-store", "token", "--snapshot-key", snapshot,
            "--timestamp-key", timestamp)
    on_token = {k["keyid"] for k in _keys(net_cli) if k["store"] == "token"}
    root = json.loads((repo / "metadata" / "1.root.json").read_text())
    (root_keyid,) = root["signed"]["roles"]["root"]["keyids"]
    assert {root_keyid, snapshot, timestamp} <= on_token

    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"release 1")
    net_cli("target", "add", str(repo), "app/v1.tar.gz", "--file", str(artefact))
    net_cli("sign", str(repo), "root")
    net_cli("repo", "refresh", str(repo), "--within", "400")
    net_cli("repo", "verify", str(repo))
    timestamp_md = json.loads((repo / "metadata" / "timestamp.json").read_text())
    assert timestamp_md["signed"]["version"] >= 3
    assert [s["keyid"] for s in timestamp_md["signatures"]] == [timestamp]


def test_hsmsign_uri_signs_on_the_network_hsm(net_cli):
    keyid = net_cli("key", "generate", "releases", "--store", "token").stdout.strip()
    pem = net_cli("key", "export", keyid).stdout
    script = textwrap.dedent(f"""
        from securesystemslib.signer import Signer
        from hsmsign.keys import load_public_key_pem, tuf_key
        import hsmsign.signing  # registers the hsmsign: scheme
        public = tuf_key(load_public_key_pem({pem.encode()!r}))
        signer = Signer.from_priv_key_uri("hsmsign:{keyid}", public)
        public.verify_signature(signer.sign(b"payload"), b"payload")
        print("verified", public.keyid)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**net_cli.env, "HSMSIGN_HOME": str(net_cli.home)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"verified {keyid}"


def test_server_gone_mid_command_is_one_error_naming_it_and_nothing_is_written(
        net_cli, server, tmp_path):
    snapshot = net_cli("key", "generate", "snapshot", "--store", "token").stdout.strip()
    timestamp = net_cli("key", "generate", "timestamp", "--store", "token").stdout.strip()
    repo = tmp_path / "repo"
    net_cli("repo", "init", str(repo), "--root-store", "file", "--snapshot-key", snapshot,
            "--timestamp-key", timestamp)
    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"release 2")
    before = (tree_digest(repo), tree_digest(net_cli.home))

    # The command has listed the remote keys and waits for the PIN when the server dies.
    env = {k: v for k, v in net_cli.env.items() if k != "HSMSIGN_PIN"}
    child = pexpect.spawn(sys.executable,
                          ["-m", "hsmsign", "--home", str(net_cli.home), "target", "add",
                           str(repo), "app/v2.tar.gz", "--file", str(artefact)],
                          env=env, encoding="utf-8", timeout=60)
    child.logfile_read = log = io.StringIO()
    child.expect(f"Enter PIN for token {NETWORK_LABEL}: ")
    server.kill()
    child.sendline(TOKEN_PIN)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1, log.getvalue()
    errors = [line for line in log.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log.getvalue()
    assert server.address in errors[0] and "Traceback" not in log.getvalue()
    assert (tree_digest(repo), tree_digest(net_cli.home)) == before

    # The server is back: the next command works.
    server.start()
    net_cli("target", "add", str(repo), "app/v2.tar.gz", "--file", str(artefact))
    net_cli("repo", "verify", str(repo))
    targets = json.loads(net_cli("target", "list", str(repo), "--json").stdout)
    assert "app/v2.tar.gz" in json.dumps(targets)


def test_generate_while_the_server_is_down_names_it(net_cli, server):
    before = tree_digest(net_cli.home)
    server.kill()
    failed = net_cli.fails("key", "generate", "timestamp", "--store", "token")
    assert server.address in failed.error_lines[0]
    assert tree_digest(net_cli.home) == before
    listed = net_cli("key", "list")
    assert server.address in listed.stderr  # the warning that token keys were not listed
    tokens = net_cli("token", "list")
    assert server.address in tokens.stderr  # no token reached through that server
