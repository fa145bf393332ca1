"""Shared fixtures: one real SoftHSM2 token per test session, homes, and the real CLI.

No global configuration is touched: the token lives in a temporary directory named by
SOFTHSM2_CONF, which is set for this process before python-pkcs11 loads the module.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN_LABEL = "hsmsign-test"
TOKEN_PIN = "123456"
SO_PIN = "12345678"
PASSPHRASE = "correct horse battery staple"
DATA = Path(__file__).parent / "data"
NOTARY = DATA / "notary"

# Variables that would leak a developer's own settings into a test.
_FOREIGN = ("HSMSIGN_", "NOTARY_", "DOCKER_CONTENT_TRUST_")


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(extra)
    return env


@dataclass(frozen=True)
class SoftHSM:
    conf: Path
    module: str = SOFTHSM_MODULE
    label: str = TOKEN_LABEL
    pin: str = TOKEN_PIN

    def env(self, with_pin: bool = True) -> dict[str, str]:
        env = {"SOFTHSM2_CONF": str(self.conf), "HSMSIGN_PKCS11_MODULE": self.module,
               "HSMSIGN_TOKEN_LABEL": self.label}
        if with_pin:
            env["HSMSIGN_PIN"] = self.pin
        return env

    def add_token(self, label: str, pin: str = TOKEN_PIN) -> None:
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label,
             "--pin", pin, "--so-pin", SO_PIN],
            check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> SoftHSM:
    if not os.path.exists(SOFTHSM_MODULE) or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM2 is not installed: run the README's test command, which installs it")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # for python-pkcs11 in this process
    hsm = SoftHSM(conf)
    hsm.add_token(TOKEN_LABEL)
    return hsm


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


class Cli:
    """The real `hsmsign` in a subprocess, with a home and an environment of its own."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.env = env

    def __call__(self, *args: str, env: dict[str, str] | None = None, ok: bool = True,
                 input: str | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "hsmsign", "--home", str(self.home), *args],
            env={**self.env, **(env or {})}, capture_output=True, text=True,
            input=input if input is not None else "", timeout=120,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if ok and proc.returncode != 0:
            raise AssertionError(f"hsmsign {' '.join(args)} failed:\n{proc.stderr}")
        return result

    def fails(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run a command that must fail the way hsmsign fails: exit 1, one error line."""
        result = self(*args, env=env, ok=False)
        assert result.returncode == 1, result
        assert len(result.error_lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        return result


def passphrase_env(value: str = PASSPHRASE) -> dict[str, str]:
    return {f"HSMSIGN_{r}_PASSPHRASE": value
            for r in ("ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP", "DELEGATION")}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(home, softhsm) -> Cli:
    """The CLI with a token configured and every passphrase in the environment."""
    return Cli(home, clean_environ(**softhsm.env(), **passphrase_env()))


@pytest.fixture(scope="session")
def no_token_env(tmp_path_factory) -> dict[str, str]:
    """Nothing configured, and the SoftHSM that auto-detection finds has no token."""
    root = tmp_path_factory.mktemp("softhsm-empty")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nlog.level = ERROR\n")
    return clean_environ(SOFTHSM2_CONF=str(conf), **passphrase_env())


@pytest.fixture
def file_cli(home, no_token_env) -> Cli:
    """The CLI on a machine with no token present."""
    return Cli(home, dict(no_token_env))


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` with its mode and content hash: "exactly as before" made checkable."""
    if not path.exists():
        return {}
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(path))
        if p.is_file():
            out[rel] = f"{oct(st.st_mode)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        else:
            out[rel] = oct(st.st_mode)
    return out


@pytest.fixture(scope="session")
def prepared_home(tmp_path_factory, no_token_env) -> Path:
    """A home with file keys of every algorithm, made once: the KDF is deliberately slow."""
    home = tmp_path_factory.mktemp("prepared") / "home"
    cli = Cli(home, dict(no_token_env))
    for role, alg in (("targets", "ecdsa-p256"), ("snapshot", "ed25519"),
                      ("timestamp", "rsa-3072"), ("releases", "ecdsa-p384")):
        cli("key", "generate", role, "--algorithm", alg, "--store", "file", "--gun", "example.com/app")
    return home


@pytest.fixture
def keyed_home(prepared_home, home) -> Path:
    """A private copy of the prepared home for a test that may change it."""
    shutil.copytree(prepared_home, home, symlinks=True)
    return home


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory):
    """A private pcscd with two readers for emulated YubiKeys (tests/pcsc_harness.py); the
    module is skipped, with the reason, where pcscd cannot run."""
    from pcsc_harness import PcscHarness, Unavailable

    harness = PcscHarness(tmp_path_factory.mktemp("pcscd"))
    try:
        harness.start()
    except Unavailable as e:
        pytest.skip(f"pcscd cannot start here: {e}")
    try:
        yield harness
    finally:
        harness.stop()
