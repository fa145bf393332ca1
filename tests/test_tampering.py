"""Metadata changed by hand is never laundered: a command that writes refuses to build on it
(a new snapshot or timestamp would vouch for it), names the file, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import Cli, clean_environ, passphrase_env, tree_digest
from test_repository import prepared_repo  # noqa: F401 - the session's repository

TAMPERED = ["root", "targets", "snapshot", "timestamp", "releases"]


@pytest.fixture(scope="module")
def delegated_repo(prepared_repo, softhsm, tmp_path_factory):  # noqa: F811
    """`releases` with a target, and `extra` whose second key (held here) has not signed yet,
    so that `sign REPO extra` writes."""
    home, repo = prepared_repo
    base = tmp_path_factory.mktemp("tampering")
    shutil.copytree(home, base / "home", symlinks=True)
    shutil.copytree(repo, base / "repo", symlinks=True)
    cli = Cli(base / "home", clean_environ(**softhsm.env(), **passphrase_env()))
    path = str(base / "repo")
    alice = json.loads(cli("key", "generate", "alice", "--json").stdout)["keyid"]
    bob = json.loads(cli("key", "generate", "bob", "--json").stdout)["keyid"]
    cli("delegation", "add", path, "releases", "--key", alice, "--path", "app/*")
    cli("target", "add", path, "app/v1.tgz", "--length", "1", "--sha256", "a" * 64,
        "--role", "releases")
    cli("delegation", "add", path, "extra", "--key", alice, "--path", "extra/*")
    cli("delegation", "add", path, "extra", "--key", bob)
    cli("repo", "verify", path)
    return base, alice


def current_file(metadata: Path, role: str) -> Path:
    """The file of `role` a client would fetch now."""
    if role == "root":
        return max(metadata.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    if role == "timestamp":
        return metadata / "timestamp.json"
    timestamp = json.loads((metadata / "timestamp.json").read_text())["signed"]
    snapshot = metadata / f"{timestamp['meta']['snapshot.json']['version']}.snapshot.json"
    if role == "snapshot":
        return snapshot
    version = json.loads(snapshot.read_text())["signed"]["meta"][f"{role}.json"]["version"]
    return metadata / f"{version}.{role}.json"


def tamper(path: Path) -> None:
    """What someone with write access to the server might do: a target slipped in, or a
    later expiry; the signatures are left as they were."""
    doc = json.loads(path.read_text())
    if "targets" in doc["signed"]:
        doc["signed"]["targets"]["app/evil.tgz"] = {"length": 1, "hashes": {"sha256": "e" * 64}}
    else:
        doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps(doc))


COMMANDS = {
    "target add": lambda repo, alice: ["target", "add", repo, "new.txt", "--length", "1",
                                       "--sha256", "b" * 64],
    "delegation add": lambda repo, alice: ["delegation", "add", repo, "other", "--key", alice,
                                           "--path", "other/*"],
    "signer add": lambda repo, alice: ["signer", "add", "carol", "--key", alice, repo],
    "repo refresh": lambda repo, alice: ["repo", "refresh", repo, "--role", "timestamp",
                                         "--within", "400"],
    "sign": lambda repo, alice: ["sign", repo, "extra"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("role", TAMPERED)
def test_a_write_refuses_to_reference_tampered_metadata(delegated_repo, softhsm, tmp_path,
                                                        role, command):
    base, alice = delegated_repo
    shutil.copytree(base / "home", tmp_path / "home", symlinks=True)
    shutil.copytree(base / "repo", tmp_path / "repo", symlinks=True)
    cli = Cli(tmp_path / "home", clean_environ(**softhsm.env(), **passphrase_env()))
    repo = tmp_path / "repo"
    victim = current_file(repo / "metadata", role)
    tamper(victim)
    before = tree_digest(repo)
    error = cli.fails(*COMMANDS[command](str(repo), alice)).error_lines
    assert len(error) == 1, error
    assert str(victim) in error[0] and "does not verify" in error[0], error[0]
    assert "changed after it was signed" in error[0]
    assert tree_digest(repo) == before


def test_without_tampering_every_one_of_those_commands_writes(delegated_repo, softhsm, tmp_path):
    """The same commands on the untouched repository succeed: the refusals above are the
    tampering's, not the commands'."""
    base, alice = delegated_repo
    shutil.copytree(base / "home", tmp_path / "home", symlinks=True)
    shutil.copytree(base / "repo", tmp_path / "repo", symlinks=True)
    cli = Cli(tmp_path / "home", clean_environ(**softhsm.env(), **passphrase_env()))
    repo = tmp_path / "repo"
    for command in COMMANDS.values():
        before = tree_digest(repo / "metadata")
        cli(*command(str(repo), alice))
        assert tree_digest(repo / "metadata") != before
    cli("repo", "verify", str(repo))
