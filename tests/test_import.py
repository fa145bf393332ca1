"""Importing what DCT / notary users have: real notary trust dirs and PKCS#8 vectors."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import NOTARY, tree_digest

VECTORS = NOTARY / "pkcs8-vectors"


def _env(passphrase: str) -> dict[str, str]:
    return {f"HSMSIGN_{r}_PASSPHRASE": passphrase
            for r in ("ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP", "DELEGATION")}


def test_notary_0_1_trust_dir_keeps_roles_and_guns(file_cli, tmp_path):
    result = file_cli("key", "import", str(NOTARY / "trustdir-0.1" / "private"), "--json",
                      env=_env("randompass"))
    imported = json.loads(result.stdout)
    assert {(r["role"], r["gun"], r["action"]) for r in imported} == {
        ("root", None, "imported"),
        ("targets", "docker.com/notary0.1/samplerepo", "imported"),
        ("snapshot", "docker.com/notary0.1/samplerepo", "imported"),
    }
    listed = {r["keyid"]: r for r in json.loads(file_cli("key", "list", "--json").stdout)}
    assert {r["keyid"] for r in imported} == set(listed)
    # Human output says per file what it did.
    text = file_cli("key", "import", str(NOTARY / "trustdir-0.1" / "private"),
                    env=_env("randompass")).stderr
    assert text.count("already present") == 3


def test_notary_0_3_trust_dir_with_rsa_delegation(file_cli):
    imported = json.loads(file_cli("key", "import", str(NOTARY / "trustdir-0.3"), "--json",
                                   env=_env("password")).stdout)
    roles = {(r["role"], r["gun"], r["algorithm"]) for r in imported}
    assert roles == {
        ("root", None, "ecdsa-p256"),
        ("targets", "docker.com/notary0.3/tst", "ecdsa-p256"),
        ("snapshot", "docker.com/notary0.3/tst", "ecdsa-p256"),
        ("releases", None, "rsa-2048"),  # notary's targets/releases is TUF's releases
    }


def test_imported_key_keeps_its_passphrase_and_signs(file_cli, home, softhsm, monkeypatch):
    from securesystemslib.signer import Signer

    from hsmsign import pkcs8
    from hsmsign.keys import load_public_key_pem, tuf_key
    from hsmsign.signing import HsmsignSigner  # noqa: F401 - registers hsmsign:

    imported = json.loads(file_cli("key", "import", str(VECTORS / "03-ecdsa-secp256r1-encrypted.pem"),
                                   "--role", "targets", "--json", env=_env("ponies")).stdout)[0]
    data = (home / "private" / f"{imported['keyid']}.key").read_bytes()
    assert pkcs8.load_private_key(data, b"ponies") is not None  # same passphrase as notary's
    public = tuf_key(load_public_key_pem(file_cli("key", "export", imported["keyid"]).stdout.encode()))
    # In this process the session's SoftHSM token is the only one python-pkcs11 may load.
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HSMSIGN_HOME", str(home))
    monkeypatch.setenv("HSMSIGN_TARGETS_PASSPHRASE", "ponies")
    signer = Signer.from_priv_key_uri(f"hsmsign:{imported['keyid']}", public)
    public.verify_signature(signer.sign(b"payload"), b"payload")


@pytest.mark.parametrize("name,algorithm", [
    ("01-rsa-2048", "rsa-2048"), ("03-ecdsa-secp256r1", "ecdsa-p256"),
    ("04-ecdsa-secp384r1", "ecdsa-p384"), ("05-ecdsa-secp521r1", "ecdsa-p521"),
    ("06-ed25519-notaryoid", "ed25519"),
])
def test_current_notary_format_vectors(file_cli, name, algorithm):
    enc = json.loads(file_cli("key", "import", str(VECTORS / f"{name}-encrypted.pem"),
                              "--role", "targets", "--json", env=_env("ponies")).stdout)[0]
    assert enc["algorithm"] == algorithm
    # The plain twin is the same key: importing it is "already there".
    error = file_cli.fails("key", "import", str(VECTORS / f"{name}-plain.pem"), "--role",
                           "targets", env=_env("ponies")).error_lines[0]
    assert "already" in error and enc["keyid"] in error


def test_unsupported_curve_is_refused_and_nothing_written(file_cli, home):
    result = file_cli.fails("key", "import", str(VECTORS / "02-ecdsa-secp224r1-encrypted.pem"),
                            "--role", "targets", env=_env("ponies"))
    assert "secp224r1" in result.error_lines[0]
    assert tree_digest(home) == {}


def test_plain_key_needs_a_new_passphrase(file_cli, home):
    result = file_cli.fails("key", "import", str(VECTORS / "03-ecdsa-secp256r1-plain.pem"),
                            "--role", "targets", env={"HSMSIGN_TARGETS_PASSPHRASE": ""})
    assert "HSMSIGN_TARGETS_PASSPHRASE" in result.error_lines[0]
    assert tree_digest(home) == {}


def test_dir_import_is_all_or_nothing(file_cli, home, tmp_path):
    trust = tmp_path / "trust"
    shutil.copytree(NOTARY / "trustdir-0.1" / "private", trust)
    env = _env("randompass")
    env["HSMSIGN_SNAPSHOT_PASSPHRASE"] = "wrong passphrase"
    result = file_cli.fails("key", "import", str(trust), env=env)
    # The whole path (notary 0.1 and 0.3 trees hold files of the same name), the variable,
    # and what happened.
    snapshot_file = next(trust.rglob("*_snapshot.key"))
    assert result.error_lines == [f"error: wrong passphrase for snapshot key {snapshot_file}; "
                                  "check HSMSIGN_SNAPSHOT_PASSPHRASE; nothing imported"]
    assert tree_digest(home) == {}


def test_file_without_a_role_needs_role(file_cli, home):
    result = file_cli.fails("key", "import", str(VECTORS / "03-ecdsa-secp256r1-encrypted.pem"),
                            env=_env("ponies"))
    assert "--role" in result.error_lines[0]
    assert tree_digest(home) == {}


def test_not_a_key_file(file_cli, home, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert "not a private key" in file_cli.fails("key", "import", str(junk), "--role",
                                                 "targets").error_lines[0]
    assert tree_digest(home) == {}


def test_the_file_says_the_role_and_options_only_fill_in(file_cli, home):
    key = NOTARY / "trustdir-0.3" / "private" / "root_keys"
    key = next(key.glob("*.key"))
    error = file_cli.fails("key", "import", str(key), "--role", "snapshot",
                           env=_env("password")).error_lines[0]
    assert "is a root key; --role snapshot contradicts it" in error
    assert tree_digest(home) == {}
