"""Passphrases: which variable wins, and the prompt on a real pseudo-terminal."""

from __future__ import annotations

import json
import sys

import pexpect
import pytest

from conftest import Cli, tree_digest
from hsmsign.secrets import Secrets, SecretUnavailable, passphrase_variables


@pytest.mark.parametrize("role,expected", [
    ("root", ["HSMSIGN_ROOT_PASSPHRASE", "NOTARY_ROOT_PASSPHRASE",
              "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE"]),
    ("targets", ["HSMSIGN_TARGETS_PASSPHRASE", "NOTARY_TARGETS_PASSPHRASE",
                 "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE"]),
    ("timestamp", ["HSMSIGN_TIMESTAMP_PASSPHRASE", "NOTARY_TIMESTAMP_PASSPHRASE",
                   "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE"]),
    ("releases", ["HSMSIGN_DELEGATION_PASSPHRASE", "NOTARY_DELEGATION_PASSPHRASE",
                  "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE"]),
])
def test_variables_per_role(role, expected):
    assert passphrase_variables(role) == expected


def test_precedence_hsmsign_then_notary_then_docker():
    env = {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": "docker",
           "NOTARY_TARGETS_PASSPHRASE": "notary"}
    assert Secrets(environ=env).passphrase("targets") == "notary"
    env["HSMSIGN_TARGETS_PASSPHRASE"] = "hsmsign"
    assert Secrets(environ=env).passphrase("targets") == "hsmsign"
    del env["HSMSIGN_TARGETS_PASSPHRASE"], env["NOTARY_TARGETS_PASSPHRASE"]
    assert Secrets(environ=env).passphrase("alice") == "docker"
    # Environment values are taken as they are, even short ones (as notary does).
    assert Secrets(environ={"HSMSIGN_ROOT_PASSPHRASE": "x"}).new_passphrase("root") == "x"
    with pytest.raises(SecretUnavailable, match="HSMSIGN_ROOT_PASSPHRASE"):
        Secrets(environ=env).passphrase("root")


def _spawn(file_cli, *args: str) -> pexpect.spawn:
    env = {k: v for k, v in file_cli.env.items() if not k.endswith("_PASSPHRASE")}
    return pexpect.spawn(sys.executable, ["-m", "hsmsign", "--home", str(file_cli.home), *args],
                         env=env, encoding="utf-8", timeout=30)


def test_prompt_asks_twice_and_refuses_a_short_passphrase(file_cli, home):
    child = _spawn(file_cli, "key", "generate", "targets", "--json")
    for _ in range(3):
        child.expect("Enter passphrase for new targets key: ")
        child.sendline("short")
        child.expect("Passphrase is too short. Please use a password manager")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "error: Passphrase is too short" in child.before
    assert tree_digest(home) == {}


def test_prompt_mismatch_then_success(file_cli, home):
    child = _spawn(file_cli, "key", "generate", "targets", "--json")
    child.expect("Enter passphrase for new targets key: ")
    child.sendline("long enough passphrase")
    child.expect("Repeat passphrase: ")
    child.sendline("another passphrase!")
    child.expect("Passphrases do not match.")
    child.expect("Enter passphrase for new targets key: ")
    child.sendline("long enough passphrase")
    child.expect("Repeat passphrase: ")
    child.sendline("long enough passphrase")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "long enough passphrase" not in child.before  # never echoed
    keyid = json.loads(child.before[child.before.index("{"):])["keyid"]
    # The passphrase typed at the prompt protects the key.
    from hsmsign import pkcs8

    data = (home / "private" / f"{keyid}.key").read_bytes()
    assert pkcs8.load_private_key(data, b"long enough passphrase") is not None


def test_existing_key_passphrase_is_asked_once(keyed_home, file_cli):
    child = _spawn(file_cli, "key", "export", "--private", "--format", "notary",
                   next(p.stem for p in (keyed_home / "private").glob("*.key")))
    child.expect("Enter passphrase for ")
    child.sendline("correct horse battery staple")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "BEGIN ENCRYPTED PRIVATE KEY" in child.before


def test_a_mistyped_passphrase_may_be_typed_again(keyed_home, file_cli):
    child = _spawn(file_cli, "key", "export", "--private", "--format", "notary",
                   next(p.stem for p in (keyed_home / "private").glob("*.key")))
    child.expect("Enter passphrase for ")
    child.sendline("not it")
    child.expect("Wrong passphrase. Try again.")
    child.expect("Enter passphrase for ")
    child.sendline("correct horse battery staple")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "BEGIN ENCRYPTED PRIVATE KEY" in child.before


def test_import_dir_with_different_delegation_passphrases_asks_again(file_cli, home, tmp_path):
    """Two delegation keys under different passphrases: the second is asked for, not refused."""
    from hsmsign import pkcs8
    from hsmsign.keys import ALGORITHMS, generate_private_key

    trust = tmp_path / "trust" / "private"
    trust.mkdir(parents=True)
    for name, passphrase in (("alice", b"alice passphrase"), ("bob", b"bob passphrase!")):
        key = generate_private_key(ALGORITHMS["ecdsa-p256"])
        (trust / f"{name}.key").write_bytes(pkcs8.encrypt_private_key_pem(
            key, passphrase, {"role": f"targets/{name}"}, iterations=1000))
    child = _spawn(file_cli, "key", "import", str(trust.parent), "--json")
    child.expect("Enter passphrase for ")
    child.sendline("alice passphrase")
    child.expect("The passphrase typed before does not open ")
    child.expect("Enter passphrase for ")
    child.sendline("bob passphrase!")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    roles = sorted(r["role"] for r in json.loads(child.before[child.before.index("["):]))
    assert roles == ["alice", "bob"]


def test_a_secret_that_is_not_utf8_is_named_never_shown(keyed_home, no_token_env):
    keyid = next(p.stem for p in (keyed_home / "private").glob("*.key"))
    env = {k: v for k, v in no_token_env.items() if not k.endswith("_PASSPHRASE")}
    secret = "ABCDEF" + b"\xff".decode("utf-8", "surrogateescape") + "GHIJ"  # as a shell sets it
    for variable in ("HSMSIGN_TARGETS_PASSPHRASE", "HSMSIGN_SNAPSHOT_PASSPHRASE",
                     "HSMSIGN_TIMESTAMP_PASSPHRASE", "HSMSIGN_DELEGATION_PASSPHRASE"):
        env[variable] = secret
    result = Cli(keyed_home, env).fails("key", "export", keyid, "--private", "--format", "notary")
    assert len(result.error_lines) == 1 and "is not valid UTF-8; set it again" in result.error_lines[0]
    assert "ABCDEF" not in result.stderr and "position" not in result.stderr
