"""What the CLI does is a library call: `repo init` from Python gives what the command gives,
and a failed init leaves nothing behind, from Python as from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Cli, tree_digest

from hsmsign.config import NO_TOKEN
from hsmsign.errors import HsmsignError
from hsmsign.keystore.stores import KeyStores
from hsmsign.repository.init import init_repository
from hsmsign.repository.verification import verify
from hsmsign.secrets import Secrets
from hsmsign.signing import SigningService


def _roles(repo: Path) -> dict:
    root = json.loads((repo / "metadata" / "1.root.json").read_text())["signed"]
    return {name: (sorted(role["keyids"]), role["threshold"]) for name, role in root["roles"].items()}


def test_repo_init_from_python_is_the_command(keyed_home, tmp_path, no_token_env):
    cli = Cli(keyed_home, dict(no_token_env))
    keys = {k["role"]: k["keyid"] for k in json.loads(cli("key", "list", "--json").stdout)}
    given = ["--root-key", keys["releases"], "--targets-key", keys["targets"],
             "--snapshot-key", keys["snapshot"], "--timestamp-key", keys["timestamp"]]
    cli("repo", "init", str(tmp_path / "by-cli"), *given)

    stores = KeyStores(keyed_home, Secrets(environ=no_token_env), NO_TOKEN)
    result = init_repository(tmp_path / "by-python", stores, SigningService(stores),
                             root_keys=[keys["releases"]],
                             online_keys={"targets": keys["targets"],
                                          "snapshot": keys["snapshot"],
                                          "timestamp": keys["timestamp"]})
    assert sorted(result.written) == sorted(p.name for p in (tmp_path / "by-cli" / "metadata").iterdir())
    assert _roles(tmp_path / "by-python") == _roles(tmp_path / "by-cli")
    assert result.generated == []
    assert all(r.missing == 0 for r in result.repository.reports.values())
    verify(result.repository)  # as a TUF client would


def test_a_failed_init_from_python_leaves_no_directory_and_no_key(tmp_path, no_token_env):
    home = tmp_path / "home"
    env = {k: v for k, v in no_token_env.items() if k != "HSMSIGN_SNAPSHOT_PASSPHRASE"}
    stores = KeyStores(home, Secrets(environ=env), NO_TOKEN, kdf_iterations=1000)
    repo = tmp_path / "repo"
    told: list[str] = []
    with pytest.raises(HsmsignError, match="HSMSIGN_SNAPSHOT_PASSPHRASE"):
        init_repository(repo, stores, SigningService(stores), notify=told.append)
    # Every secret is asked before the first key: nothing was made, nothing is left.
    assert not repo.exists() and tree_digest(home / "private") == {} and told == []
