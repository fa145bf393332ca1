"""The file key store through the real CLI: format, permissions, passphrases, bad input."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem

from conftest import PASSPHRASE, Cli, tree_digest
from hsmsign import pkcs8


def _records(cli) -> list[dict]:
    return json.loads(cli("key", "list", "--json").stdout)


def _by_role(cli, role: str) -> dict:
    return next(r for r in _records(cli) if r["role"] == role)


def test_generate_writes_an_encrypted_pkcs8_file_with_headers(file_cli, home):
    out = json.loads(file_cli("key", "generate", "targets", "--gun", "example.com/app",
                              "--json").stdout)
    assert set(out) == {"keyid", "role", "gun", "algorithm", "store", "location"}
    assert (out["role"], out["gun"], out["algorithm"], out["store"]) == \
        ("targets", "example.com/app", "ecdsa-p256", "file")
    path = Path(out["location"])
    assert path == home / "private" / f"{out['keyid']}.key"
    assert (home.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o700, 0o700)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----\nrole: targets\n"
                           "gun: example.com/app\n\n")
    # PBES2 / PBKDF2-HMAC-SHA256 / >= 600,000 iterations / AES-256-CBC, read by asn1crypto.
    body = "\n".join(l for l in text.splitlines() if ":" not in l or l.startswith("-----"))
    _, _, der = asn1_pem.unarmor(body.encode())
    info = asn1_keys.EncryptedPrivateKeyInfo.load(der)
    params = info["encryption_algorithm"]["parameters"]
    kdf = params["key_derivation_func"]
    assert info["encryption_algorithm"]["algorithm"].native == "pbes2"
    assert kdf["algorithm"].native == "pbkdf2"
    assert kdf["parameters"]["prf"]["algorithm"].native == "sha256"
    assert kdf["parameters"]["iteration_count"].native >= 600_000
    assert params["encryption_scheme"]["algorithm"].native == "aes256_cbc"
    assert PASSPHRASE.encode() not in path.read_bytes()


def test_openssl_reads_the_key_once_headers_are_removed(keyed_home, file_cli, tmp_path):
    record = _by_role(file_cli, "targets")
    lines = Path(record["location"]).read_text().splitlines()
    stripped = "\n".join(l for l in lines if l and ": " not in l) + "\n"
    (tmp_path / "k.pem").write_text(stripped)
    pass_file = tmp_path / "pass"
    pass_file.write_text(PASSPHRASE + "\n")
    pub = subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "k.pem"), "-passin",
                          f"file:{pass_file}", "-pubout"], capture_output=True, text=True)
    assert pub.returncode == 0, pub.stderr
    assert pub.stdout == file_cli("key", "export", record["keyid"]).stdout


def test_list_never_asks_for_a_passphrase(keyed_home, file_cli):
    env = {k: "" for k in file_cli.env if k.endswith("_PASSPHRASE")}
    result = file_cli("key", "list", "--json", env=env)
    roles = {(r["role"], r["algorithm"], r["gun"]) for r in json.loads(result.stdout)}
    assert roles == {("targets", "ecdsa-p256", "example.com/app"),
                     ("snapshot", "ed25519", "example.com/app"),
                     ("timestamp", "rsa-3072", "example.com/app"),
                     ("releases", "ecdsa-p384", "example.com/app")}
    table = file_cli("key", "list", env=env).stdout
    assert table.split()[:6] == ["ROLE", "GUN", "KEY", "ID", "ALGORITHM", "STORE"]


def test_wrong_passphrase_is_an_error_and_changes_nothing(keyed_home, file_cli):
    keyid = _by_role(file_cli, "targets")["keyid"]
    before = tree_digest(keyed_home)
    result = file_cli.fails("key", "export", keyid, "--private", "--format", "notary",
                            env={"HSMSIGN_TARGETS_PASSPHRASE": "not the passphrase"})
    assert "wrong passphrase for targets key" in result.error_lines[0]
    assert "HSMSIGN_TARGETS_PASSPHRASE" in result.error_lines[0]
    assert "not the passphrase" not in result.stderr
    assert tree_digest(keyed_home) == before


def test_no_terminal_and_no_variable_names_the_variable(home, file_cli):
    result = file_cli.fails("key", "generate", "snapshot",
                            env={"HSMSIGN_SNAPSHOT_PASSPHRASE": ""})
    assert "set HSMSIGN_SNAPSHOT_PASSPHRASE" in result.error_lines[0]
    assert tree_digest(home) == {}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bitflip"])
def test_corrupt_key_file_is_an_error_and_changes_nothing(keyed_home, file_cli, damage):
    record = _by_role(file_cli, "targets")
    path = Path(record["location"])
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"this is not a key\n"
    else:  # flip a byte in the encrypted body: decryption must fail cleanly
        lines = data.split(b"\n")
        lines[5] = lines[5][:10] + (b"A" if lines[5][10:11] != b"A" else b"B") + lines[5][11:]
        data = b"\n".join(lines)
    path.write_bytes(data)
    before = tree_digest(keyed_home)
    result = file_cli.fails("key", "export", record["keyid"], "--private", "--format", "notary")
    assert any(w in result.error_lines[0] for w in ("corrupt", "wrong passphrase"))
    assert tree_digest(keyed_home) == before


def test_notary_export_decrypts_with_an_independent_pbkdf2_sha1_reader(keyed_home, file_cli,
                                                                        tmp_path):
    import hashlib

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    record = _by_role(file_cli, "targets")
    out = tmp_path / "notary.key"
    out.write_text("someone else's file")
    refused = file_cli.fails("key", "export", record["keyid"], "--private", "--format", "notary",
                             "-o", str(out))
    assert "already exists" in refused.error_lines[0] and "--force" in refused.error_lines[0]
    assert out.read_text() == "someone else's file"
    file_cli("key", "export", record["keyid"], "--private", "--format", "notary", "-o", str(out),
             "--force")
    assert out.stat().st_mode & 0o777 == 0o600
    text = out.read_text()
    assert "role: targets\n" in text and "gun: example.com/app\n" in text
    body = "\n".join(l for l in text.splitlines() if ": " not in l)
    _, _, der = asn1_pem.unarmor(body.encode())
    info = asn1_keys.EncryptedPrivateKeyInfo.load(der)
    params = info["encryption_algorithm"]["parameters"]
    kdf = params["key_derivation_func"]["parameters"]
    assert kdf["prf"].native["algorithm"] == "sha1"  # the DER default...
    assert b"\x2a\x86\x48\x86\xf7\x0d\x02\x07" not in der  # ...because the PRF OID is absent
    key = hashlib.pbkdf2_hmac("sha1", PASSPHRASE.encode(), kdf["salt"].native,
                              kdf["iteration_count"].native, 32)
    iv = params["encryption_scheme"]["parameters"].native
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(info["encrypted_data"].native) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    private = load_der_private_key(unpadder.update(padded) + unpadder.finalize(), None)
    from hsmsign.keys import key_id

    assert key_id(private.public_key()) == record["keyid"]


def test_passwd_changes_the_passphrase(keyed_home, file_cli):
    record = _by_role(file_cli, "snapshot")
    file_cli("key", "passwd", record["keyid"][:9],
             env={"HSMSIGN_NEW_PASSPHRASE": "a brand new passphrase"})
    data = Path(record["location"]).read_bytes()
    with pytest.raises(pkcs8.WrongPassphrase):
        pkcs8.load_private_key(data, PASSPHRASE.encode())
    assert pkcs8.load_private_key(data, b"a brand new passphrase") is not None
    assert Path(record["location"]).stat().st_mode & 0o777 == 0o600


def test_remove_needs_force_without_a_terminal(keyed_home, file_cli):
    record = _by_role(file_cli, "releases")
    before = tree_digest(keyed_home)
    assert "--force" in file_cli.fails("key", "remove", record["keyid"]).error_lines[0]
    assert tree_digest(keyed_home) == before
    file_cli("key", "remove", record["keyid"], "--force")
    assert record["keyid"] not in {r["keyid"] for r in _records(file_cli)}
    assert not Path(record["location"]).exists()


def test_key_id_prefixes(keyed_home, file_cli):
    records = _records(file_cli)
    keyid = records[0]["keyid"]
    assert file_cli("key", "export", keyid[:7]).stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert "too short" in file_cli.fails("key", "export", keyid[:6]).error_lines[0]
    assert "no key matches" in file_cli.fails("key", "export", "0" * 7 + "zz").error_lines[0]
    # Two key files that share a 7-character prefix: an ambiguous prefix lists both.
    private = keyed_home / "private"
    twin = keyid[:7] + "f" * 57 if keyid[7] != "f" else keyid[:7] + "e" * 57
    os.link(private / f"{keyid}.key", private / f"{twin}.key")
    error = file_cli.fails("key", "export", keyid[:7]).error_lines[0]
    assert "ambiguous" in error and keyid in error and twin in error


def test_unknown_algorithm_and_bad_role_are_errors(home, file_cli):
    bad = file_cli.fails("key", "generate", "targets", "--algorithm", "dsa")
    assert bad.returncode == 1 and "'dsa' is not one of 'ecdsa-p256'" in bad.error_lines[0]
    assert "invalid role name" in file_cli.fails("key", "generate", "../evil").error_lines[0]
    assert tree_digest(home) == {}


@pytest.mark.skipif(shutil.which("notary") is None, reason="the notary CLI (Debian package notary) is not installed")
def test_notary_cli_loads_our_export_and_we_load_what_notary_writes(keyed_home, file_cli, tmp_path):
    """The real notary: imports hsmsign's export, decrypts it (passwd), and hsmsign reads notary's file."""
    from hsmsign.keys import load_public_key_pem, notary_key_id

    record = _by_role(file_cli, "targets")
    exported = tmp_path / "export.key"
    file_cli("key", "export", record["keyid"], "--private", "--format", "notary", "-o", str(exported))
    public = load_public_key_pem(file_cli("key", "export", record["keyid"]).stdout.encode())
    notary_id = notary_key_id(public)
    assert f"path: {notary_id}\n" in exported.read_text()
    trust = tmp_path / "trust"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NOTARY_TARGETS_PASSPHRASE": PASSPHRASE}
    run = functools.partial(subprocess.run, capture_output=True, text=True, env=env, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert run(["notary", "-d", str(trust), "key", "import", str(exported)]).returncode == 0
    listed = run(["notary", "-d", str(trust), "key", "list"]).stdout
    assert notary_id in listed and "example.com/app" in listed
    # `key passwd` makes notary decrypt our file and write it again in its own format.
    passwd = run(["notary", "-d", str(trust), "key", "passwd", notary_id])
    assert passwd.returncode == 0, passwd.stderr
    rewritten = trust / "private" / f"{notary_id}.key"
    assert rewritten.read_bytes() != exported.read_bytes()
    fresh = file_cli.home.parent / "fresh-home"
    from conftest import Cli

    imported = json.loads(Cli(fresh, file_cli.env)("key", "import", str(rewritten), "--json").stdout)
    assert imported[0]["keyid"] == record["keyid"] and imported[0]["gun"] == "example.com/app"


def test_notary_export_of_an_online_key_without_gun_is_refused(home, file_cli):
    keyid = json.loads(file_cli("key", "generate", "snapshot", "--json").stdout)["keyid"]
    error = file_cli.fails("key", "export", keyid, "--private", "--format", "notary").error_lines[0]
    assert "GUN" in error


def test_export_json(keyed_home, file_cli):
    record = _by_role(file_cli, "targets")
    out = json.loads(file_cli("key", "export", record["keyid"], "--json").stdout)
    assert out["keyid"] == record["keyid"] and out["pem"].startswith("-----BEGIN PUBLIC KEY-----")


def test_a_new_home_and_its_missing_parents_are_private_whatever_the_umask(tmp_path,
                                                                            no_token_env):
    home = tmp_path / "a" / "b" / "home"
    old = os.umask(0)
    try:
        Cli(home, dict(no_token_env))("key", "generate", "targets", "--store", "file")
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", home, home / "private", home / "public"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    for key_file in (home / "private").iterdir():
        assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_home_that_is_someone_elses_directory_is_refused_not_chmod_ed(tmp_path, no_token_env):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "notes.txt").write_text("someone's")
    result = Cli(shared, dict(no_token_env)).fails("key", "generate", "targets", "--store", "file")
    assert "is open to others (mode 0755) and holds files hsmsign did not make (notes.txt)" \
        in result.error_lines[0]
    assert shared.stat().st_mode & 0o777 == 0o755 and sorted(os.listdir(shared)) == ["notes.txt"]
    # An hsmsign home left open (say, copied with cp -r) is tightened.
    own = tmp_path / "own"
    (own / "private").mkdir(parents=True)
    own.chmod(0o755)
    Cli(own, dict(no_token_env))("key", "generate", "targets", "--store", "file")
    assert own.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("args, says", [
    (("key", "generate"), "error: Missing argument 'ROLE'; see `hsmsign key generate --help`"),
    (("key", "generate", "targets", "--bogus"), "error: No such option '--bogus'"),
    (("key", "genrate"), "error: No such command 'genrate'. Did you mean 'generate'?"),
    (("backup", "restore", "/nonexistent.tar.age", "-i", "/nonexistent"),
     "error: Invalid value for '--identity' / '-i'"),
])
def test_a_usage_mistake_is_one_error_line_exit_1_and_writes_nothing(home, file_cli, args, says):
    """click's own errors keep the contract of every other error: one line, exit code 1."""
    out = file_cli.fails(*args)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(says), out.stderr
    assert "Usage:" not in out.stderr and out.stdout == ""
    assert tree_digest(home) == {}
