"""Backups through the real CLI: round trip, the stock `age` and GNU tar, DCT migration,
restore plans, verify, hardware keys, bad destinations, a full disk, a drive that reads back
wrong, the progress bar.

Key files are made once per session (the KDF is deliberately slow); tests that change a
home or an archive work on copies. Hostile archives are in test_backup_hostile.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import NOTARY, Cli, tree_digest

BACKUP_PASSPHRASE = "backup passphrase for the USB sticks"
NAME = re.compile(r"^hsmsign-backup-\d{4}-\d\d-\d\d-[0-9a-f]{8}\.tar\.age$")


def key_files(home: Path) -> dict[str, bytes]:
    """private/ and public/ of a home, name -> bytes."""
    return {f"{sub}/{p.name}": p.read_bytes()
            for sub in ("private", "public") if (home / sub).is_dir()
            for p in sorted((home / sub).iterdir())}


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(list(args), check=kwargs.pop("check", False), **kwargs)


# -- session fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def backup_home(tmp_path_factory, prepared_home, no_token_env) -> Path:
    """Every role (root, targets, snapshot, timestamp, a delegation) and every algorithm
    (ecdsa-p256, ecdsa-p384, ed25519, rsa-3072) in files. Read-only: copy it to change it."""
    home = tmp_path_factory.mktemp("backup") / "home"
    shutil.copytree(prepared_home, home, symlinks=True)
    Cli(home, dict(no_token_env))("key", "generate", "root", "--store", "file")
    return home


@pytest.fixture(scope="session")
def custodians(tmp_path_factory) -> list[tuple[Path, str]]:
    """Two age identities made by the stock age-keygen: (identity file, recipient)."""
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        pytest.fail("the age CLI is not installed: run scripts/setup (Debian package age)")
    root = tmp_path_factory.mktemp("custodians")
    out = []
    for name in ("alice", "bob"):
        identity = root / f"{name}.txt"
        run("age-keygen", "-o", str(identity), check=True)
        recipient = run("age-keygen", "-y", str(identity), check=True, text=True).stdout.strip()
        out.append((identity, recipient))
    return out


@pytest.fixture(scope="session")
def recipient_archive(tmp_path_factory, backup_home, custodians, no_token_env) -> Path:
    """A backup of backup_home to both custodians (alice by --recipient, bob by file)."""
    root = tmp_path_factory.mktemp("recipient-archive")
    (root / "recipients.txt").write_text(f"# bob\n{custodians[1][1]}\n")
    (root / "usb").mkdir()
    out = Cli(backup_home, dict(no_token_env))(
        "backup", "create", "--output", str(root / "usb"), "--recipient", custodians[0][1],
        "--recipients-file", str(root / "recipients.txt"))
    return Path(out.stdout.strip())


@pytest.fixture
def fresh_cli(tmp_path, no_token_env) -> Cli:
    """The CLI on an empty home (which does not exist yet)."""
    return Cli(tmp_path / "restored", dict(no_token_env))


# -- round trip ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def passphrase_backup(tmp_path_factory, backup_home, no_token_env) -> dict:
    """`backup create` of backup_home to two directories with the backup passphrase (age's
    scrypt costs about two seconds here: made once). Returns the --json summary."""
    root = tmp_path_factory.mktemp("passphrase-backup")
    cli = Cli(backup_home, {**no_token_env, "HSMSIGN_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE})
    (root / "usb1").mkdir(), (root / "usb2").mkdir()
    out = cli("backup", "create", "--output", str(root / "usb1"), "--output", str(root / "usb2"),
              "--json")
    return json.loads(out.stdout)


def test_round_trip_two_copies_wipe_restore_and_sign_with_every_key(passphrase_backup,
                                                                    backup_home, tmp_path,
                                                                    no_token_env):
    out = passphrase_backup
    assert out["key_count"] == 5 and out["hardware_key_count"] == 0
    assert out["encryption"] == "passphrase"
    assert {(k["role"], k["algorithm"]) for k in out["keys"]} == {
        ("root", "ecdsa-p256"), ("targets", "ecdsa-p256"), ("snapshot", "ed25519"),
        ("timestamp", "rsa-3072"), ("releases", "ecdsa-p384")}
    copies = [Path(a["path"]) for a in out["archives"]]
    assert [c.parent.name for c in copies] == ["usb1", "usb2"]
    assert all(NAME.match(c.name) for c in copies)
    assert copies[0].read_bytes() == copies[1].read_bytes()
    import hashlib

    for a in out["archives"]:
        data = Path(a["path"]).read_bytes()
        assert (a["size"], a["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert Path(a["path"]).stat().st_mode & 0o777 == 0o600
        assert os.listdir(Path(a["path"]).parent) == [copies[0].name]  # no temp file left
    assert BACKUP_PASSPHRASE.encode() not in copies[0].read_bytes()

    # Wipe the home (a copy of the one backed up), then restore it from the second copy.
    home = tmp_path / "home"
    shutil.copytree(backup_home, home)
    shutil.rmtree(home)
    cli = Cli(home, {**no_token_env, "HSMSIGN_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE})
    restored = json.loads(cli("backup", "restore", str(copies[1]), "--json").stdout)
    assert {k["action"] for k in restored["keys"]} == {"add"}
    assert key_files(home) == key_files(backup_home)
    for p in [home, home / "private", home / "public"]:
        assert p.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (home / "private").iterdir())
    assert sorted(os.listdir(home)) == ["private", "public"]  # no staging left behind

    # Every restored key signs, and the signature verifies (securesystemslib, as python-tuf).
    from hsmsign.config import NO_TOKEN
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets
    from hsmsign.signing import signer_for

    stores = KeyStores(home, Secrets(environ={k: v for k, v in no_token_env.items()
                                              if k.endswith("_PASSPHRASE")}), NO_TOKEN)
    signed = set()
    for keyid in stores.files.keyids():
        signer = signer_for(stores, keyid)
        signature = signer.sign(b"restored payload")
        signer.public_key.verify_signature(signature, b"restored payload")
        signed.add(keyid)
    assert len(signed) == 5


def test_wrong_backup_passphrase_names_the_variable_and_writes_nothing(passphrase_backup,
                                                                       tmp_path, no_token_env):
    archive = passphrase_backup["archives"][0]["path"]
    target = Cli(tmp_path / "target", {**no_token_env, "HSMSIGN_BACKUP_PASSPHRASE": "wrong-backup-secret"})
    result = target.fails("backup", "restore", str(archive))
    assert "wrong passphrase for backup" in result.error_lines[0]
    assert "HSMSIGN_BACKUP_PASSPHRASE" in result.error_lines[0]
    assert "wrong-backup-secret" not in result.stderr and BACKUP_PASSPHRASE not in result.stderr
    assert not (tmp_path / "target").exists()
    # Without the variable and without a terminal: an error that says what to set.
    result = Cli(tmp_path / "target", dict(no_token_env)).fails("backup", "verify", str(archive))
    assert "set HSMSIGN_BACKUP_PASSPHRASE" in result.error_lines[0]


# -- the stock tools -----------------------------------------------------------------------


def test_recipients_decrypt_with_stock_age_and_untar_with_gnu_tar(recipient_archive, custodians,
                                                                  backup_home, tmp_path):
    for n, (identity, _) in enumerate(custodians):
        out = tmp_path / f"custodian{n}"
        out.mkdir()
        pipeline = f"age -d -i {identity} {recipient_archive} | tar -x -C {out}"
        done = run("bash", "-o", "pipefail", "-c", pipeline, text=True)
        assert done.returncode == 0, done.stderr
        assert key_files(out) == key_files(backup_home)
        assert sorted(os.listdir(out)) == ["MANIFEST.json", "private", "public"]
        for p in (out / "private", out / "public"):
            assert p.stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in (out / "private").iterdir())
    manifest = json.loads((tmp_path / "custodian0" / "MANIFEST.json").read_text())
    assert (manifest["format"], manifest["version"]) == ("hsmsign-backup", 1)
    assert manifest["hsmsign_version"] and manifest["created"].endswith("Z")
    import hashlib

    for key in manifest["keys"]:
        assert key["store"] == "file" and key["exported"] is True
        for f in key["files"]:
            data = (tmp_path / "custodian0" / f["name"]).read_bytes()
            assert (f["size"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert str(backup_home) not in (tmp_path / "custodian0" / "MANIFEST.json").read_text()
    # The check docs/backup.md gives for a restore by hand.
    if shutil.which("jq") is None:
        pytest.fail("jq is not installed: run scripts/setup (Debian package jq)")
    check = run("bash", "-o", "pipefail", "-c",
                "jq -r '.keys[] | select(.exported) | .files[] | \"\\(.sha256)  \\(.name)\"' "
                "MANIFEST.json | sha256sum -c", cwd=tmp_path / "custodian0", text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.count(": OK") == 10
    # GNU tar's view: owner 0/0, no names, 0600 files, 0700 directories, manifest first.
    listing = run("bash", "-o", "pipefail", "-c",
                  f"age -d -i {custodians[0][0]} {recipient_archive} | tar -tv --numeric-owner",
                  text=True, check=True).stdout.splitlines()
    assert listing[0].split()[:2] == ["-rw-------", "0/0"] and listing[0].endswith("MANIFEST.json")
    assert all(line.split()[1] == "0/0" for line in listing)
    assert {line.split()[0] for line in listing} == {"-rw-------", "drwx------"}


def test_passphrase_asked_twice_at_a_prompt_and_stock_age_decrypts_on_a_pty(backup_home,
                                                                             tmp_path,
                                                                             no_token_env):
    usb = tmp_path / "usb"
    usb.mkdir()
    env = {k: v for k, v in no_token_env.items() if k != "HSMSIGN_BACKUP_PASSPHRASE"}
    child = pexpect.spawn(sys.executable, ["-m", "hsmsign", "--home", str(backup_home), "backup",
                                           "create", "--output", str(usb)],
                          env=env, encoding="utf-8", timeout=60)
    child.logfile_read = log = io.StringIO()
    child.expect("Enter passphrase for the new backup: ")
    child.sendline("short")
    child.expect("too short")
    child.expect("Enter passphrase for the new backup: ")
    child.sendline(BACKUP_PASSPHRASE)
    child.expect("Repeat passphrase: ")
    child.sendline(BACKUP_PASSPHRASE + " typo")
    child.expect("do not match")
    child.expect("Enter passphrase for the new backup: ")
    child.sendline(BACKUP_PASSPHRASE)
    child.expect("Repeat passphrase: ")
    child.sendline(BACKUP_PASSPHRASE)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert BACKUP_PASSPHRASE not in log.getvalue()  # never echoed
    (archive,) = usb.iterdir()

    # Debian's age refuses -p without a terminal: drive `age -d` on a pseudo-terminal.
    plain = tmp_path / "backup.tar"
    age = pexpect.spawn("age", ["-d", "-o", str(plain), str(archive)], encoding="utf-8",
                        timeout=60)
    age.expect("(?i)passphrase")
    age.sendline(BACKUP_PASSPHRASE)
    age.expect(pexpect.EOF)
    age.close()
    assert age.exitstatus == 0, age.before
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xf", str(plain), "-C", str(out), check=True)
    assert key_files(out) == key_files(backup_home)


def test_restore_archives_made_by_hand_with_gnu_tar_and_age(recipient_archive, custodians,
                                                            backup_home, tmp_path, fresh_cli):
    identity, recipient = custodians[0]
    # 1. An hsmsign backup unpacked, packed again with GNU tar (gzip, ./ names, real owner
    #    names) and encrypted with the stock age: the manifest still vouches for every file.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    run("bash", "-o", "pipefail", "-c",
        f"age -d -i {identity} {recipient_archive} | tar -x -C {unpacked}", check=True)
    by_hand = tmp_path / "by-hand.tar.age"
    run("bash", "-o", "pipefail", "-c",
        f"tar -czf - -C {unpacked} . | age -r {recipient} > {by_hand}", check=True)
    out = json.loads(fresh_cli("backup", "restore", str(by_hand), "--identity", str(identity),
                               "--json").stdout)
    assert out["kind"] == "hsmsign" and {k["action"] for k in out["keys"]} == {"add"}
    assert key_files(fresh_cli.home) == key_files(backup_home)

    # 2. Docker's documented backup piped through age (armored): a trust dir, imported key
    #    by key.
    trust = tmp_path / "trust"
    shutil.copytree(NOTARY / "trustdir-0.3", trust)
    dct = tmp_path / "dct.tar.gz.age"
    run("bash", "-o", "pipefail", "-c",
        f"tar -czf - -C {trust} private | age -a -r {recipient} > {dct}", check=True)
    other = Cli(tmp_path / "other", {**fresh_cli.env, **_passphrases("password")})
    out = json.loads(other("backup", "restore", str(dct), "-i", str(identity), "--json").stdout)
    assert out["kind"] == "trust dir"
    assert sorted((k["role"], k["action"]) for k in out["keys"]) == [
        ("releases", "add"), ("root", "add"), ("snapshot", "add"), ("targets", "add")]


def _passphrases(value: str) -> dict[str, str]:
    return {f"HSMSIGN_{r}_PASSPHRASE": value
            for r in ("ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP", "DELEGATION")}


# -- migration from Docker Content Trust ---------------------------------------------------


def test_dct_migration_from_dockers_documented_tar_gz(tmp_path, no_token_env):
    """`umask 077; tar -zcvf private_keys_backup.tar.gz ~/.docker/trust/private`, run as the
    Docker docs say, on a trust dir written by notary; restored into an empty home."""
    user = tmp_path / "user"
    shutil.copytree(NOTARY / "trustdir-0.3", user / ".docker" / "trust")
    done = run("bash", "-c", "cd ~ && umask 077 && "
               "tar -zcvf private_keys_backup.tar.gz ~/.docker/trust/private",
               env={"HOME": str(user), "PATH": os.environ["PATH"]}, text=True)
    assert done.returncode == 0, done.stderr
    archive = user / "private_keys_backup.tar.gz"
    cli = Cli(tmp_path / "home", {**no_token_env, **_passphrases("password")})

    plan = json.loads(cli("backup", "restore", str(archive), "--dry-run", "--json").stdout)
    assert plan["dry_run"] and plan["written"] == []
    assert tree_digest(tmp_path / "home") == {}

    out = json.loads(cli("backup", "restore", str(archive), "--json").stdout)
    keys = {(k["role"], k["gun"], k["algorithm"], k["action"]) for k in out["keys"]}
    assert keys == {("root", None, "ecdsa-p256", "add"),
                    ("targets", "docker.com/notary0.3/tst", "ecdsa-p256", "add"),
                    ("snapshot", "docker.com/notary0.3/tst", "ecdsa-p256", "add"),
                    ("releases", None, "rsa-2048", "add")}
    assert all(".docker/trust/private/" in k["source"] for k in out["keys"])
    listed = json.loads(cli("key", "list", "--json").stdout)
    assert {r["keyid"] for r in listed} == {k["keyid"] for k in out["keys"]}
    # Imported keys keep notary's passphrase: the export decrypts with it.
    targets = next(r for r in listed if r["role"] == "targets")
    cli("key", "export", targets["keyid"], "--private", "--format", "notary",
        "-o", str(tmp_path / "t.key"))
    # Again: everything is already there.
    again = json.loads(cli("backup", "restore", str(archive), "--json").stdout)
    assert {k["action"] for k in again["keys"]} == {"already present"}


def test_dct_migration_of_a_notary_0_1_plain_tar(tmp_path, no_token_env):
    tar = tmp_path / "trust-0.1.tar"
    run("tar", "-cf", str(tar), "-C", str(NOTARY / "trustdir-0.1"), ".", check=True)
    cli = Cli(tmp_path / "home", {**no_token_env, **_passphrases("randompass")})
    out = json.loads(cli("backup", "restore", str(tar), "--json").stdout)
    assert {(k["role"], k["gun"]) for k in out["keys"]} == {
        ("root", None), ("targets", "docker.com/notary0.1/samplerepo"),
        ("snapshot", "docker.com/notary0.1/samplerepo")}
    # A wrong passphrase for one role: nothing at all is imported.
    other = Cli(tmp_path / "other", {**cli.env, "HSMSIGN_SNAPSHOT_PASSPHRASE": "wrong"})
    error = other.fails("backup", "restore", str(tar)).error_lines[0]
    assert "wrong passphrase" in error and "snapshot" in error
    assert tree_digest(tmp_path / "other") == {}


# -- restore plans -------------------------------------------------------------------------


def test_restore_plan_added_identical_conflict_and_force(recipient_archive, custodians,
                                                         backup_home, tmp_path, no_token_env):
    home = tmp_path / "home"
    shutil.copytree(backup_home, home)
    cli = Cli(home, dict(no_token_env))
    identity = str(custodians[1][0])
    records = {r["role"]: r for r in json.loads(cli("key", "list", "--json").stdout)}
    # One key gone (to be added), one re-encrypted under another passphrase (a conflict).
    cli("key", "remove", records["snapshot"]["keyid"], "--force")
    cli("key", "passwd", records["targets"]["keyid"],
        env={"HSMSIGN_NEW_PASSPHRASE": "another passphrase"})
    before = tree_digest(home)

    refused = cli.fails("backup", "restore", str(recipient_archive), "-i", identity)
    assert "conflict" in refused.error_lines[0] and "--force" in refused.error_lines[0]
    assert records["targets"]["keyid"][:12] in refused.error_lines[0]
    assert "CONFLICT" in refused.stdout  # the plan is shown before the error
    assert tree_digest(home) == before

    # A dry run shows the same plan, and fails as the restore would.
    dry = cli.fails("backup", "restore", str(recipient_archive), "-i", identity, "--dry-run",
                    "--json")
    assert "a restore would write nothing" in dry.error_lines[0]
    plan = json.loads(dry.stdout)
    actions = {k["role"]: k["action"] for k in plan["keys"]}
    assert actions == {"snapshot": "add", "targets": "conflict", "root": "identical",
                       "timestamp": "identical", "releases": "identical"}
    assert tree_digest(home) == before

    done = json.loads(cli("backup", "restore", str(recipient_archive), "-i", identity,
                          "--force", "--json").stdout)
    assert {k["role"]: k["action"] for k in done["keys"]}["targets"] == "replace"
    assert sorted(done["written"]) == sorted([
        f"private/{records['snapshot']['keyid']}.key", f"public/{records['snapshot']['keyid']}.pub",
        f"private/{records['targets']['keyid']}.key"])
    assert key_files(home) == key_files(backup_home)
    assert not [p for p in home.iterdir() if p.name.startswith(".")]


def test_restore_into_a_home_whose_key_directory_is_a_file_changes_nothing(
        recipient_archive, custodians, tmp_path, no_token_env):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "private").write_bytes(b"not a directory")
    before = tree_digest(home)
    result = Cli(home, dict(no_token_env)).fails(
        "backup", "restore", str(recipient_archive), "-i", str(custodians[0][0]))
    assert result.error_lines == [
        f"error: cannot read {home / 'private'}: Not a directory; nothing was restored"]
    assert tree_digest(home) == before


# -- verify --------------------------------------------------------------------------------


def test_verify_lists_the_keys_and_checks_passphrases(recipient_archive, custodians,
                                                      backup_home, tmp_path, no_token_env):
    cli = Cli(tmp_path / "nowhere", dict(no_token_env))
    identity = str(custodians[0][0])
    out = json.loads(cli("backup", "verify", str(recipient_archive), "-i", identity,
                         "--json").stdout)
    assert out["encryption"] == "recipients" and out["key_count"] == 5
    assert out["members"] == 11  # the manifest, 5 key files, 5 public keys
    assert {k["keyid"] for k in out["keys"]} == {p.name[:-4] for p in (backup_home / "private").iterdir()}
    table = cli("backup", "verify", str(recipient_archive), "-i", identity)
    assert "KEY ID" in table.stdout and "ok, 5 file key(s)" in table.stderr

    checked = json.loads(cli("backup", "verify", str(recipient_archive), "-i", identity,
                             "--check-passphrases", "--json").stdout)
    assert checked["passphrases_checked"] is True
    wrong = cli.fails("backup", "verify", str(recipient_archive), "-i", identity,
                      "--check-passphrases", env={"HSMSIGN_TIMESTAMP_PASSPHRASE": "nope nope"})
    assert "wrong passphrase for timestamp key" in wrong.error_lines[0]
    assert "HSMSIGN_TIMESTAMP_PASSPHRASE" in wrong.error_lines[0]
    # Recipients without an identity, and a plain tar given to verify.
    assert "--identity" in cli.fails("backup", "verify", str(recipient_archive)).error_lines[0]
    plain = tmp_path / "plain.tar"
    run("tar", "-cf", str(plain), "-C", str(backup_home), "private", check=True)
    assert "not an hsmsign backup" in cli.fails("backup", "verify", str(plain)).error_lines[0]
    assert not (tmp_path / "nowhere").exists()


# -- hardware keys -------------------------------------------------------------------------


def test_hardware_keys_are_listed_not_exported(cli, home, tmp_path, custodians, softhsm):
    token_key = json.loads(cli("key", "generate", "root", "--store", "token", "--json").stdout)
    file_key = json.loads(cli("key", "generate", "timestamp", "--store", "file", "--json").stdout)
    (tmp_path / "usb").mkdir()
    out = json.loads(cli("backup", "create", "-o", str(tmp_path / "usb"), "-r", custodians[0][1],
                         "--json").stdout)
    assert out["key_count"] == 1 and out["hardware_key_count"] >= 1
    archive = out["archives"][0]["path"]
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    run("bash", "-o", "pipefail", "-c",
        f"age -d -i {custodians[0][0]} {archive} | tar -x -C {unpacked}", check=True)
    manifest = json.loads((unpacked / "MANIFEST.json").read_text())
    entry = next(k for k in manifest["keys"] if k["keyid"] == token_key["keyid"])
    assert entry["exported"] is False and entry["store"] == "token" and entry["role"] == "root"
    assert softhsm.label in entry["location"] and entry["slot"] is not None
    assert "cannot leave its token" in entry["note"]
    assert not (unpacked / "private" / f"{token_key['keyid']}.key").exists()
    assert sorted(os.listdir(unpacked / "private")) == [f"{file_key['keyid']}.key"]
    text = cli("backup", "create", "-o", str(tmp_path / "usb" / "second.tar.age"), "-r",
               custodians[0][1]).stderr
    assert f"not exported: root key {token_key['keyid']}" in text
    plan = json.loads(cli("backup", "restore", archive, "-i", str(custodians[0][0]), "--dry-run",
                          "--json").stdout)
    assert {k["keyid"]: k["action"] for k in plan["keys"]}[token_key["keyid"]] == "hardware"
    cli("key", "remove", token_key["keyid"], "--force")  # the session's token is shared


# -- bad destinations and input ------------------------------------------------------------


def test_bad_destinations_are_refused_and_change_nothing(backup_home, tmp_path, no_token_env,
                                                         custodians):
    cli = Cli(backup_home, {**no_token_env, "HSMSIGN_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE})
    recipient = custodians[0][1]
    # A recipients file holding an identity by mistake (secrets stay out of argv, tests too).
    identity_text = next(line for line in custodians[0][0].read_text().splitlines()
                         if line.startswith("AGE-SECRET-KEY-"))
    mistaken = tmp_path / "recipients.txt"
    mistaken.write_text(identity_text + "\n")
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "taken.tar.age").write_bytes(b"an older backup")
    home_before, usb_before = tree_digest(backup_home), tree_digest(usb)
    cases = [
        (["-o", str(backup_home)], "inside the home"),
        (["-o", str(backup_home / "private" / "x.tar.age")], "inside the home"),
        (["-o", str(tmp_path / "not-mounted" / "x.tar.age")], "does not exist"),
        # A drive's mount point with no drive mounted: never a stray file named after it.
        (["-o", str(tmp_path / "usb2")], "is not a directory; mount the drive"),
        (["-o", str(usb / "taken.tar.age")], "already exists"),
        (["-o", str(usb), "-o", str(tmp_path / ".." / tmp_path.name / "usb")], "given twice"),
        (["-o", str(usb), "-r", "age1notarecipient"], "not an age recipient"),
        (["-o", str(usb), "-R", str(mistaken)], "that is an age identity (a secret key)"),
        (["-o", "/dev/null", "--force"], "not a regular file"),
    ]
    for args, expected in cases:
        result = cli.fails("backup", "create", *args, "-r", recipient)
        assert expected in result.error_lines[0], (args, result.stderr)
        assert identity_text not in result.stderr  # a secret given by mistake is not echoed
    empty = Cli(tmp_path / "empty-home", dict(no_token_env))
    assert "no file keys" in empty.fails("backup", "create", "-o", str(usb)).error_lines[0]
    no_secret = Cli(backup_home, dict(no_token_env))
    error = no_secret.fails("backup", "create", "-o", str(usb)).error_lines[0]
    assert "HSMSIGN_BACKUP_PASSPHRASE" in error
    assert tree_digest(backup_home) == home_before and tree_digest(usb) == usb_before
    assert not (tmp_path / "empty-home").exists() and not (tmp_path / "usb2").exists()
    # --force replaces an existing file (atomically: the old one until the new is verified).
    made = cli("backup", "create", "-o", str(usb / "taken.tar.age"), "-r", recipient, "--force",
               "--json")
    out = json.loads(made.stdout)
    assert (usb / "taken.tar.age").read_bytes() != b"an older backup"
    # tmp_path is on the home's file system: the warning an unmounted /media/usb1 would get.
    assert f"warning: {usb} is on the same file system as the home" in made.stderr
    assert out["archives"][0]["size"] == (usb / "taken.tar.age").stat().st_size


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (root may mount one); skipped where mounting is not permitted."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = run("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount), text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip()}); "
                    "the full-disk case needs root or CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        run("umount", str(mount))


def _fill(mount: Path, leave: int) -> None:
    """Fill the file system until about `leave` bytes are free."""
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
        except OSError:
            pass


def test_full_destination_leaves_no_partial_archive_anywhere(recipient_archive, backup_home,
                                                             tmp_path, tiny_fs, custodians,
                                                             no_token_env):
    usb = tmp_path / "usb"
    usb.mkdir()
    _fill(tiny_fs, 8192)
    full_before, usb_before = tree_digest(tiny_fs), tree_digest(usb)
    cli = Cli(backup_home, dict(no_token_env))
    result = cli.fails("backup", "create", "-o", str(usb), "-o", str(tiny_fs),
                       "-r", custodians[0][1])
    assert "no space left" in result.error_lines[0] and str(tiny_fs) in result.error_lines[0]
    assert tree_digest(tiny_fs) == full_before and tree_digest(usb) == usb_before


def test_full_home_disk_restores_nothing(recipient_archive, custodians, tiny_fs, no_token_env):
    home = tiny_fs / "home"
    _fill(tiny_fs, 12288)
    before = tree_digest(tiny_fs)
    cli = Cli(home, dict(no_token_env))
    result = cli.fails("backup", "restore", str(recipient_archive), "-i", str(custodians[0][0]))
    assert "no space left" in result.error_lines[0] and "nothing was restored" in result.error_lines[0]
    assert tree_digest(tiny_fs) == before


def test_read_only_home_restores_nothing_with_a_clear_error(recipient_archive, custodians,
                                                              tiny_fs, no_token_env):
    done = run("mount", "-o", "remount,ro", str(tiny_fs), text=True)
    assert done.returncode == 0, done.stderr
    result = Cli(tiny_fs / "home", dict(no_token_env)).fails(
        "backup", "restore", str(recipient_archive), "-i", str(custodians[0][0]))
    assert result.error_lines == [
        f"error: cannot write to {tiny_fs / 'home'}: Read-only file system; nothing was restored"]
    assert list(tiny_fs.iterdir()) == []


def test_restore_tightens_an_existing_home_to_0700(recipient_archive, custodians, tmp_path,
                                                   no_token_env):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    Cli(home, dict(no_token_env))("backup", "restore", str(recipient_archive), "-i",
                                  str(custodians[0][0]))
    assert home.stat().st_mode & 0o777 == 0o700


def test_an_age_header_with_no_known_recipient_is_called_damaged(recipient_archive, custodians,
                                                                  tmp_path, no_token_env):
    data = recipient_archive.read_bytes()
    damaged = tmp_path / "damaged.tar.age"
    damaged.write_bytes(data.replace(b"-> X25519 ", b"-> X25519x "))
    result = Cli(tmp_path / "home", dict(no_token_env)).fails(
        "backup", "restore", str(damaged), "-i", str(custodians[0][0]))
    assert "names neither a passphrase nor a recipient hsmsign knows (X25519x" \
        in result.error_lines[0]
    assert "it is damaged" in result.error_lines[0]
    assert not (tmp_path / "home").exists()


# -- a failing drive -----------------------------------------------------------------------


@pytest.fixture
def failing_drive(tmp_path):
    """(mount point, backing directory) of a FUSE drive whose reads come back with a byte
    flipped (tests/failing_drive.py); skipped where FUSE cannot be mounted."""
    import time

    backing, mount, log = tmp_path / "backing", tmp_path / "failing-usb", tmp_path / "drive.log"
    backing.mkdir(), mount.mkdir()
    with open(log, "wb") as stderr:  # a file, not a pipe: a full pipe would hang the drive
        drive = subprocess.Popen([sys.executable,
                                  str(Path(__file__).with_name("failing_drive.py")),
                                  str(backing), str(mount)], stderr=stderr)
    deadline = time.monotonic() + 15
    while not os.path.ismount(mount):
        if drive.poll() is not None or time.monotonic() > deadline:
            drive.kill()
            drive.wait()
            pytest.skip(f"cannot mount a FUSE file system here ({log.read_text().strip()}); "
                        "the failing-drive case needs /dev/fuse and libfuse2")
        time.sleep(0.05)
    try:
        yield mount, backing
    finally:
        if run("umount", str(mount)).returncode != 0:
            run("umount", "-l", str(mount))
        try:
            drive.wait(timeout=15)
        except subprocess.TimeoutExpired:
            drive.kill()
            drive.wait()


def test_a_drive_that_reads_back_wrong_fails_the_backup_and_keeps_no_copy(
        backup_home, tmp_path, failing_drive, custodians, no_token_env):
    mount, backing = failing_drive
    (mount / "written.txt").write_bytes(b"0123456789")  # the drive really corrupts reads
    assert (backing / "written.txt").read_bytes() == b"0123456789"
    assert (mount / "written.txt").read_bytes() != b"0123456789"
    (backing / "written.txt").unlink()
    usb = tmp_path / "usb"
    usb.mkdir()
    before = tree_digest(backup_home), tree_digest(usb), tree_digest(backing)
    cli = Cli(backup_home, dict(no_token_env))
    result = cli.fails("backup", "create", "-o", str(usb), "-o", str(mount),
                       "-r", custodians[0][1])
    assert result.error_lines == [
        f"error: the copy written to {mount} reads back differently from what was written: "
        "the drive may be failing; nothing was written to any destination"]
    # Neither the good drive nor the failing one keeps a copy, or a temp file.
    assert (tree_digest(backup_home), tree_digest(usb), tree_digest(backing)) == before


# -- many keys: the progress bar -----------------------------------------------------------


def test_progress_bar_on_a_terminal_for_many_keys(backup_home, tmp_path, no_token_env,
                                                  custodians):
    """60 key files (copies of one real file under made-up IDs: the bar counts files)."""
    home = tmp_path / "home"
    (home / "private").mkdir(parents=True)
    source = next((backup_home / "private").iterdir()).read_bytes()
    for n in range(60):
        (home / "private" / f"{n:064x}.key").write_bytes(source)
    usb = tmp_path / "usb"
    usb.mkdir()
    child = pexpect.spawn(sys.executable, ["-m", "hsmsign", "--home", str(home), "backup",
                                           "create", "-o", str(usb), "-r", custodians[0][1]],
                          env={**no_token_env, "TERM": "xterm"}, encoding="utf-8",
                          timeout=60, dimensions=(40, 160))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "Reading key files" in child.before and "60/60" in child.before
    assert "Backed up 60 file key(s)" in child.before
    # Not on a terminal: no bar, just the result.
    quiet = Cli(home, dict(no_token_env))("backup", "create", "-o", str(usb / "2.tar.age"), "-r",
                                          custodians[0][1])
    assert "Reading key files" not in quiet.stderr


def test_a_key_file_in_the_clear_or_a_link_is_never_backed_up(backup_home, tmp_path,
                                                               no_token_env):
    home = tmp_path / "home"
    shutil.copytree(backup_home, home, symlinks=True)
    clear = NOTARY / "pkcs8-vectors" / "03-ecdsa-secp256r1-plain.pem"
    planted = home / "private" / f"{'b' * 64}.key"
    usb = tmp_path / "usb"
    usb.mkdir()
    cli = Cli(home, {**no_token_env, "HSMSIGN_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE})
    for make, expected in ((lambda: planted.symlink_to(clear), "is a symbolic link"),
                           (lambda: planted.write_bytes(clear.read_bytes().replace(
                               b"-----\n", b"-----\nrole: targets\n\n", 1)), "is not encrypted")):
        planted.unlink(missing_ok=True)
        make()
        assert expected in cli.fails("backup", "create", "-o", str(usb)).error_lines[0]
        assert list(usb.iterdir()) == []


# -- two cores for a large home (hsmsign/backup/forked.py, keyfiles.py) -----------------------

READ_KEYS = r"""
import json, os, signal, sys, threading
from pathlib import Path
from hsmsign.backup.keyfiles import read_key_files
from hsmsign.config import NO_TOKEN
from hsmsign.keystore.file import KeyFileError
from hsmsign.keystore.stores import KeyStores
from hsmsign.secrets import Secrets

files = KeyStores(Path(sys.argv[1]), Secrets(environ={}), NO_TOKEN).files
keyids = files.keyids()
how = sys.argv[2]


def children() -> list[int]:
    # This script starts no process: a child is the forked reader (running, or exited and
    # not yet waited for).
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


out = {"keys": [], "children": 0}
try:
    if how == "serial":
        read = files.each_key_files(keyids)
    else:
        read = read_key_files(files, keyids, parallel_min=2)
    for n, f in enumerate(read):
        if n == 0 and how != "serial":
            out["children"] = len(children())
            if how == "kill":
                # The child waits at a FIFO among its key files: killed there, then the FIFO
                # gives the key's bytes to whoever reads it next (this process, making up
                # for the child's half).
                for pid in children():
                    os.kill(pid, signal.SIGKILL)
                fifo, original = sys.argv[3], open(sys.argv[4], "rb").read()
                threading.Thread(target=lambda: open(fifo, "wb").write(original)).start()
        r = f.record
        out["keys"].append([r.keyid, r.role, r.gun, r.algorithm, str(r.store), r.location,
                            f.private.hex(), f.public.hex() if f.public else None])
except KeyFileError as e:
    out["error"] = [str(e.path), e.fault.name, str(e)]
out["left"] = len(children())
print(json.dumps(out))
"""


def read_keys(home: Path, how: str, *more: str) -> dict:
    done = run(sys.executable, "-c", READ_KEYS, str(home), how, *more, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_large_home_is_read_by_two_processes_in_order_with_the_same_first_error(
        backup_home, tmp_path):
    """read_key_files with a child reading the second half (parallel_min=2 stands in for the
    2,000 keys that make it pay): the same keys, bytes and records in the same order as one by
    one, the same first fault wherever it is, and a child killed midway is made up for."""
    serial = read_keys(backup_home, "serial")
    assert len(serial["keys"]) >= 4 and "error" not in serial
    parallel = read_keys(backup_home, "parallel")
    assert parallel["children"] == 1 and parallel["left"] == 0
    assert parallel["keys"] == serial["keys"]
    keyids = [k[0] for k in serial["keys"]]
    home = tmp_path / "fifo"
    shutil.copytree(backup_home, home, symlinks=True)
    waiting = home / "private" / f"{keyids[-1]}.key"
    waiting.unlink()
    os.mkfifo(waiting)
    killed = read_keys(home, "kill", str(waiting),
                       str(backup_home / "private" / f"{keyids[-1]}.key"))
    assert killed["children"] == 1 and killed["left"] == 0
    assert killed["keys"] == [[*k[:5], str(home / "private" / f"{k[0]}.key"), *k[6:]]
                              for k in serial["keys"]]

    for index in (1, len(keyids) - 2):  # the first half (read here), the second (the child)
        home = tmp_path / f"home{index}"
        shutil.copytree(backup_home, home, symlinks=True)
        (home / "private" / f"{keyids[index]}.key").write_bytes(b"-----BEGIN ENCRYPTED "
                                                                  b"PRIVATE KEY-----\n!!\n")
        (home / "private" / f"{keyids[-1]}.key").unlink()
        (home / "private" / f"{keyids[-1]}.key").symlink_to("/etc/passwd")
        one_by_one, both = read_keys(home, "serial"), read_keys(home, "parallel")
        assert one_by_one["error"][:2] == [str(home / "private" / f"{keyids[index]}.key"),
                                            "CORRUPT"]
        assert both["error"] == one_by_one["error"] and both["keys"] == one_by_one["keys"]
        assert both["left"] == 0


FORKED = r"""
import os, sys
from hsmsign.backup.forked import ChildFailed, Forked

def fails():
    raise RuntimeError("in the child")

def dies():
    os.kill(os.getpid(), 9)

print("once", flush=True)  # the child never comes back here to print it again
assert Forked.start(lambda a, b: (a, b, [b"\x00" * 3]), "x", 2).result() == ("x", 2, [b"\x00" * 3])
for fn in (fails, dies, lambda: object()):
    try:
        Forked.start(fn).result()
        raise SystemExit(f"no ChildFailed from {fn}")
    except ChildFailed:
        pass
import threading
stop = threading.Event()
threading.Thread(target=stop.wait).start()
assert Forked.start(lambda: 1) is None  # another thread runs: no fork
stop.set()
print("done")
"""


def test_a_forked_childs_failure_is_reported_never_run_twice():
    done = run(sys.executable, "-c", FORKED, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["once", "done"]


def test_a_backup_of_2000_keys_is_read_by_two_processes_and_restores_every_file(
        backup_home, tmp_path, no_token_env, custodians):
    """Above PARALLEL_MIN keys `backup create` reads half of them in a child process and
    checks the archive decrypts in another: what restores is every file, byte for byte."""
    from hsmsign.backup.keyfiles import PARALLEL_MIN

    home = tmp_path / "home"
    shutil.copytree(backup_home, home, symlinks=True)
    source = sorted((home / "private").iterdir())[0].read_bytes()
    for n in range(PARALLEL_MIN):  # and one real key file under made-up IDs (no public key
        (home / "private" / f"{n:064x}.key").write_bytes(source)  # file: it would not match)
    usb = tmp_path / "usb"
    usb.mkdir()
    env = dict(no_token_env)
    archive = Cli(home, env)("backup", "create", "-o", str(usb), "-r", custodians[0][1])
    restored = tmp_path / "restored"
    Cli(restored, env)("backup", "restore", archive.stdout.strip(), "-i", str(custodians[0][0]))
    assert key_files(restored) == key_files(home)
