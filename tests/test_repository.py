"""Repository management through the real CLI, checked by python-tuf's own client."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from conftest import Cli, clean_environ, passphrase_env, tree_digest


@pytest.fixture(scope="session")
def prepared_repo(tmp_path_factory, softhsm) -> tuple[Path, Path]:
    """A repository with root on the SoftHSM token and the online keys in files, made once."""
    base = tmp_path_factory.mktemp("repo")
    cli = Cli(base / "home", clean_environ(**softhsm.env(), **passphrase_env()))
    cli("repo", "init", str(base / "repo"))
    return base / "home", base / "repo"


@pytest.fixture
def env(softhsm):
    return clean_environ(**softhsm.env(), **passphrase_env())


@pytest.fixture
def repo(prepared_repo, tmp_path, env) -> tuple[Cli, Path]:
    home, repo = prepared_repo
    shutil.copytree(home, tmp_path / "home", symlinks=True)
    shutil.copytree(repo, tmp_path / "repo", symlinks=True)
    return Cli(tmp_path / "home", env), tmp_path / "repo"


class Server:
    """A loopback static web server for REPO, as any web server would serve it."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(repo):
    s = Server(repo[1])
    yield s
    s.close()


def updater(repo_path: Path, server: Server, client_dir: Path) -> Updater:
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    return Updater(str(client_dir / "metadata"), f"{server.url}/metadata/",
                   str(client_dir / "targets"), f"{server.url}/targets/",
                   bootstrap=(repo_path / "metadata" / "1.root.json").read_bytes())


def keyid_of(cli: Cli, repo_path: Path, role: str) -> str:
    """The (first) key of `role` in the repository's metadata: the token holds other tests' keys."""
    roles = json.loads(cli("repo", "status", str(repo_path), "--json").stdout)["roles"]
    return next(r for r in roles if r["role"] == role)["keys"][0]["keyid"]


def test_init_layout_and_defaults(repo):
    cli, path = repo
    names = sorted(p.name for p in (path / "metadata").iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
    roles = {r["role"]: r for r in json.loads(cli("repo", "status", str(path), "--json").stdout)["roles"]}
    root = json.loads((path / "metadata" / "1.root.json").read_text())
    assert root["signed"]["consistent_snapshot"] is True
    stores = {r["keyid"]: r["store"] for r in json.loads(cli("key", "list", "--json").stdout)}
    assert stores[roles["root"]["keys"][0]["keyid"]] == "token"
    assert stores[roles["targets"]["keys"][0]["keyid"]] == "file"
    from datetime import datetime, timezone

    def days_left(role):
        expires = datetime.fromisoformat(roles[role]["expires"].replace("Z", "+00:00"))
        return (expires - datetime.now(timezone.utc)).total_seconds() / 86400

    assert round(days_left("root")) == 365 and round(days_left("targets")) == 90
    assert round(days_left("snapshot")) == 7 and round(days_left("timestamp")) == 1
    assert all(r["threshold_met"] and not r["problems"] for r in roles.values())


def test_client_end_to_end_with_delegation_and_rotations(repo, server, tmp_path):
    cli, path = repo
    payload = tmp_path / "app-1.0.tar.gz"
    payload.write_bytes(b"release 1.0\n" * 1000)
    cli("target", "add", str(path), "app/app-1.0.tar.gz", "--file", str(payload))
    cli("target", "add", str(path), "app/by-hash.bin", "--length", "3", "--sha256",
        "a" * 64)
    # A delegation whose key is here (DCT's signer add: releases + alice).
    alice = json.loads(cli("key", "generate", "alice", "--json").stdout)["keyid"]
    pub = tmp_path / "alice.pub"
    cli("key", "export", alice, "-o", str(pub))
    cli("signer", "add", "alice", "--key", str(pub), str(path))
    cli("target", "add", str(path), "latest", "--length", "5", "--sha256", "b" * 64,
        "--role", "releases")
    cli("repo", "verify", str(path))

    client = tmp_path / "client"
    up = updater(path, server, client)
    up.refresh()
    info = up.get_targetinfo("app/app-1.0.tar.gz")
    assert info is not None and info.length == payload.stat().st_size
    downloaded = up.download_target(info)
    assert Path(downloaded).read_bytes() == payload.read_bytes()
    assert up.get_targetinfo("latest").hashes == {"sha256": "b" * 64}
    assert up.get_targetinfo("app/by-hash.bin").length == 3
    assert up.get_targetinfo("nope") is None

    # Root rotation: a new root key on the token replaces the old one.
    old_root = keyid_of(cli, path, "root")
    new_root = json.loads(cli("key", "generate", "root", "--store", "token", "--json").stdout)["keyid"]
    out = cli("rotate", str(path), "root", "--add-key", new_root, "--remove-key", old_root, "--json")
    signing = {s["role"]: s for s in json.loads(out.stdout)["signing"]}
    assert signing["root"]["valid_signatures"] == [new_root]
    assert signing["root (previous keys)"]["valid_signatures"] == [old_root]
    # Targets key rotation: a new file key.
    old_targets = keyid_of(cli, path, "targets")
    new_targets = json.loads(cli("key", "generate", "targets", "--json").stdout)["keyid"]
    cli("rotate", str(path), "targets", "--add-key", new_targets, "--remove-key", old_targets)
    cli("repo", "verify", str(path))

    up = updater(path, server, client)  # same local metadata: the client walks 1 -> 2 -> 3
    up.refresh()
    assert up.get_targetinfo("latest") is not None
    assert up.get_targetinfo("app/app-1.0.tar.gz") is not None
    assert json.loads((client / "metadata" / "root.json").read_text())["signed"]["version"] == 3


def test_threshold_root_signed_by_two_tokens_one_custodian_at_a_time(softhsm, tmp_path):
    softhsm.add_token("custodian-b")
    env_a = clean_environ(**softhsm.env(), **passphrase_env())
    env_b = dict(env_a, HSMSIGN_TOKEN_LABEL="custodian-b")
    alice, bob = Cli(tmp_path / "alice", env_a), Cli(tmp_path / "bob", env_b)
    keys = []
    for who, n in ((alice, 1), (bob, 1), (bob, 2)):
        keyid = json.loads(who("key", "generate", "root", "--store", "token", "--json").stdout)["keyid"]
        pem = tmp_path / f"root-{keyid[:7]}.pub"
        who("key", "export", keyid, "-o", str(pem))
        keys.append((keyid, pem))
    path = tmp_path / "repo"
    args = [a for _, pem in keys for a in ("--root-key", str(pem))]
    alice("repo", "init", str(path), *args, "--root-threshold", "2")
    # Alice's token alone: 1 of 2.
    result = alice.fails("repo", "verify", str(path))
    assert "valid signatures did not meet threshold for root" in result.error_lines[0]
    status = json.loads(alice("repo", "status", str(path), "--json").stdout)["roles"][0]
    assert status["signatures"] == 1 and status["threshold"] == 2
    assert "needs 1 more signature" in status["problems"][0]
    # Bob signs the same 1.root.json with his token, one key only.
    before = (path / "metadata" / "1.root.json").read_bytes()
    bob("sign", str(path), "root", "--key", keys[1][0])
    after = json.loads((path / "metadata" / "1.root.json").read_text())
    assert after["signed"] == json.loads(before)["signed"]  # same metadata, one more signature
    assert {s["keyid"] for s in after["signatures"]} == {keys[0][0], keys[1][0]}
    alice("repo", "verify", str(path))
    # Signing again changes nothing.
    again = bob("sign", str(path), "root", "--key", keys[1][0])
    assert "nothing changed" in again.stderr


def test_tampering_is_caught_by_verify_and_by_the_client(repo, server, tmp_path):
    cli, path = repo
    cli("target", "add", str(path), "a.txt", "--length", "1", "--sha256", "c" * 64)
    targets = path / "metadata" / "2.targets.json"
    doc = json.loads(targets.read_text())
    doc["signed"]["targets"]["a.txt"]["length"] = 2
    targets.write_text(json.dumps(doc))
    assert "targets" in cli.fails("repo", "verify", str(path)).error_lines[0]
    from tuf.api.exceptions import RepositoryError

    up = updater(path, server, tmp_path / "client")
    with pytest.raises(RepositoryError, match="targets was signed by 0/1 keys"):
        up.refresh()
    # Editing commands refuse to build on it, and change nothing.
    before = tree_digest(path)
    error = cli.fails("target", "add", str(path), "b.txt", "--length", "1", "--sha256",
                      "d" * 64).error_lines[0]
    assert "changed after it was signed" in error
    assert tree_digest(path) == before


@pytest.mark.parametrize("damage", ["wrong_type", "rollback", "not_json"])
def test_hand_edited_metadata_is_an_error(repo, damage):
    cli, path = repo
    cli("target", "add", str(path), "a.txt", "--length", "1", "--sha256", "c" * 64)
    md = path / "metadata"
    if damage == "wrong_type":
        doc = json.loads((md / "2.snapshot.json").read_text())
        doc["signed"]["_type"] = "timestamp"
        (md / "2.snapshot.json").write_text(json.dumps(doc))
    elif damage == "rollback":
        shutil.copy(md / "1.targets.json", md / "2.targets.json")
    else:
        (md / "2.targets.json").write_text("{not json")
    before = tree_digest(path)
    cli.fails("repo", "verify", str(path))
    cli.fails("target", "add", str(path), "b.txt", "--length", "1", "--sha256", "d" * 64)
    assert tree_digest(path) == before


def test_expired_metadata_fails_verify_and_refresh_fixes_it(repo, tmp_path, env):
    cli, _ = repo
    path = tmp_path / "short"
    cli("repo", "init", str(path), "--expires", "timestamp=0.00002")  # ~2 seconds
    time.sleep(2.5)
    assert "expired" in cli.fails("repo", "verify", str(path)).error_lines[0]
    config = json.loads((path / "hsmsign.json").read_text())  # the periods are settings
    assert config["expires"]["timestamp"] == 0.00002
    config["expires"]["timestamp"] = 1
    (path / "hsmsign.json").write_text(json.dumps(config))
    out = cli("repo", "refresh", str(path))
    assert "refreshed: timestamp" in out.stderr
    cli("repo", "verify", str(path))


def test_refresh_within_days_bumps_every_role_it_can_sign(repo):
    cli, path = repo
    cli("repo", "refresh", str(path), "--within", "400")
    status = {r["role"]: r["version"]
              for r in json.loads(cli("repo", "status", str(path), "--json").stdout)["roles"]}
    assert status == {"root": 2, "targets": 2, "snapshot": 2, "timestamp": 2}
    cli("repo", "verify", str(path))
    # Nothing due: nothing written.
    before = tree_digest(path / "metadata")
    assert "nothing was due" in cli("repo", "refresh", str(path)).stderr
    assert tree_digest(path / "metadata") == before


def test_manifest_json_and_csv_list_and_remove(repo, tmp_path):
    cli, path = repo
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({
        "v1/app.tar.gz": {"length": 10, "hashes": {"sha256": "1" * 64}, "custom": {"tag": "v1"}},
        "v2/app.tar.gz": {"length": 20, "hashes": {"sha256": "2" * 64}},
        # Not the fast path: an upper-case hash is normalised; a dot segment and brackets are
        # valid paths, and a table must show the brackets (rich would read them as markup).
        "[beta]/.app.tar.gz": {"length": 5, "hashes": {"sha256": "AB" * 32}},
    }))
    cli("target", "add", str(path), "--from-manifest", str(manifest))
    # Metadata is written compactly (one line, sorted keys: json's C encoder), as python-tuf
    # reads it; a TUF client's check is test_python_tuf_client_*.
    written = (path / "metadata" / "2.targets.json").read_bytes()
    assert b"\n" not in written and b'": ' not in written
    assert written == json.dumps(json.loads(written), separators=(",", ":"),
                                 sort_keys=True).encode()
    assert "[beta]/.app.tar.gz" in cli("target", "list", str(path)).stdout
    for bad_path in ("v5/../etc/passwd", "/abs/app", "v5//app", "v5/./app", "v5/app/"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"ok/app": {"length": 1, "hashes": {"sha256": "4" * 64}},
                                   bad_path: {"length": 1, "hashes": {"sha256": "4" * 64}}}))
        before = tree_digest(path)
        out = cli.fails("target", "add", str(path), "--from-manifest", str(bad))
        assert "error:" in out.stderr and tree_digest(path) == before, bad_path
    csv = tmp_path / "m.csv"
    csv.write_text("path,length,sha256\nv3/app.tar.gz,30," + "3" * 64 + "\n")
    cli("target", "add", str(path), "--from-manifest", str(csv))
    listed = {t["path"]: t for t in json.loads(cli("target", "list", str(path), "--json").stdout)}
    assert set(listed) == {"v1/app.tar.gz", "v2/app.tar.gz", "v3/app.tar.gz", "[beta]/.app.tar.gz"}
    assert listed["[beta]/.app.tar.gz"]["hashes"] == {"sha256": "ab" * 32}
    assert listed["v1/app.tar.gz"]["custom"] == {"tag": "v1"}
    assert listed["v3/app.tar.gz"]["hashes"] == {"sha256": "3" * 64}
    status = cli("repo", "status", str(path)).stdout
    targets_key = keyid_of(cli, path, "targets")
    row = next(l for l in status.splitlines() if l.startswith("v1/app.tar.gz"))
    assert row.split()[1:] == ["1" * 64, "targets", targets_key[:7]]  # who signed each target
    assert f"targets (threshold 1)  {targets_key}" in status
    cli("target", "remove", str(path), "v2/app.tar.gz")
    assert "v2/app.tar.gz" not in cli("target", "list", str(path)).stdout
    cli("repo", "verify", str(path))


def test_manifest_entries_are_checked_one_by_one(tmp_path):
    """The manifest's fast path (hashes kept as given) takes exactly what the full check takes."""
    from hsmsign.errors import HsmsignError
    from hsmsign.repository.targets import targets_from_manifest

    manifest = tmp_path / "m.json"
    good = {"a": {"length": 7, "hashes": {"sha256": "0" * 64}},
            "b": {"length": "8", "hashes": {"sha256": "Ab" * 32}},
            "c": {"length": 0, "hashes": {"sha256": " " + "c" * 64 + "\n"}, "custom": {"k": 1}}}
    manifest.write_text(json.dumps(good))
    got = {t.path: (t.length, t.hashes, t.custom) for t in targets_from_manifest(manifest)}
    assert got == {"a": (7, {"sha256": "0" * 64}, None), "b": (8, {"sha256": "ab" * 32}, None),
                   "c": (0, {"sha256": "c" * 64}, {"k": 1})}
    for entry, expected in (({"length": -1, "hashes": {"sha256": "0" * 64}}, "negative"),
                            ({"length": "x", "hashes": {"sha256": "0" * 64}}, "whole number"),
                            ({"length": None, "hashes": {"sha256": "0" * 64}}, "whole number"),
                            ({"length": 1, "hashes": {"sha256": "g" * 64}}, "64 hex"),
                            ({"length": 1, "hashes": {"sha256": "a" * 63}}, "64 hex"),
                            ({"length": 1, "hashes": {"sha256": "a" * 62 + "\u0661" * 2}}, "64 hex"),
                            ({"length": 1, "hashes": {"sha256": "0x" + "a" * 62}}, "64 hex")):
        manifest.write_text(json.dumps({"ok": good["a"], "bad/app": entry}))
        with pytest.raises(HsmsignError, match=expected):
            targets_from_manifest(manifest)


def test_unsigned_delegation_is_reported_in_dct_words(repo, tmp_path):
    cli, path = repo
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmsign.keys import public_key_pem

    bob_pub = tmp_path / "bob.pub"  # a signer whose private key is on another machine
    bob_pub.write_bytes(public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    out = cli("signer", "add", "bob", "--key", str(bob_pub), str(path))
    assert "releases v1: 0/1 signatures" in out.stderr
    # Staged, not published: clients never see releases unsigned (issue 15).
    assert "staged staged/1.releases.json" in out.stderr
    cli("repo", "verify", str(path))
    status = json.loads(cli("repo", "status", str(path), "--json").stdout)
    assert "releases" not in {r["role"] for r in status["roles"]}
    staged = {r["role"]: r for r in status["staged"]}
    assert not staged["releases"]["complete"] and staged["releases"]["thresholds"][0]["threshold"] == 1
    # Removing the signer leaves releases with no key: the DCT warning.
    out = cli("signer", "remove", "bob", str(path))
    assert ("role releases has fewer keys than its threshold of 1; it will not be usable "
            "until keys are added to it") in out.stderr
    cli("repo", "verify", str(path))


def test_bad_input_changes_nothing(repo, tmp_path):
    cli, path = repo
    alice = json.loads(cli("key", "generate", "alice", "--json").stdout)["keyid"]
    cli("delegation", "add", str(path), "a", "--key", alice, "--path", "pkg/*")
    cli("delegation", "add", str(path), "b", "--key", alice, "--path", "pkg/b*", "--from", "a")
    before = tree_digest(path)
    cases = [
        (["target", "add", str(path), "x", "--length", "1", "--sha256", "e" * 64, "--role", "nope"],
         "unknown role"),
        (["delegation", "add", str(path), "a", "--key", alice, "--from", "b"], "already delegated"),
        (["delegation", "add", str(path), "b", "--key", alice, "--from", "b"], "cycle"),
        (["delegation", "add", str(path), "c", "--key", alice, "--path", "other/*", "--from", "a"],
         "outside what a may sign"),
        (["delegation", "add", str(path), "d", "--key", alice, "--threshold", "0"], "threshold 0"),
        (["delegation", "add", str(path), "d", "--key", alice, "--threshold", "2"], "threshold 2"),
        (["delegation", "add", str(path), "d", "--key", "abcdef0123456"], "no key matches"),
        (["rotate", str(path), "targets", "--remove-key", alice], "matches 0 keys of targets"),
        (["target", "add", str(path), "elsewhere/x", "--length", "1", "--sha256", "e" * 64,
          "--role", "a"], "outside the paths delegated to a"),
        (["target", "add", str(path), "../x", "--length", "1", "--sha256", "e" * 64], "invalid target path"),
        (["target", "add", str(path), "x", "--length", "1", "--sha256", "xyz"], "64 hex"),
        (["target", "remove", str(path), "never-added"], "has no target"),
        (["sign", str(path), "nope"], "unknown role"),
        (["delegation", "add", str(path), "root", "--key", alice], "top-level role"),
    ]
    for args, expected in cases:
        result = cli.fails(*args)
        assert expected in result.error_lines[0], (args, result.stderr)
        assert tree_digest(path) == before, args
    # A role with one key cannot lose it through rotation.
    targets_key = keyid_of(cli, path, "targets")
    assert "threshold" in cli.fails("rotate", str(path), "targets", "--remove-key",
                                    targets_key).error_lines[0]
    assert tree_digest(path) == before


def test_a_second_process_waits_for_the_lock_then_fails_cleanly(repo):
    cli, path = repo
    from hsmsign.repository import RepositoryLock

    before = tree_digest(path)
    with RepositoryLock(path):
        result = cli.fails("target", "add", str(path), "x", "--length", "1", "--sha256", "e" * 64,
                           env={"HSMSIGN_LOCK_TIMEOUT": "0.5"})
    assert "another hsmsign process is changing" in result.error_lines[0]
    assert tree_digest(path) == before
    cli("target", "add", str(path), "x", "--length", "1", "--sha256", "e" * 64)


def test_init_refuses_an_existing_repository(repo):
    cli, path = repo
    before = tree_digest(path)
    assert "is not empty" in cli.fails("repo", "init", str(path)).error_lines[0]
    assert tree_digest(path) == before


def test_one_command_makes_one_new_version_of_each_role(repo, tmp_path):
    cli, path = repo
    alice = json.loads(cli("key", "generate", "alice", "--json").stdout)["keyid"]
    out = json.loads(cli("signer", "add", "alice", "--key", alice, str(path), "--json").stdout)
    # targets gains two delegations (releases, alice) in one new version; one snapshot.
    assert sorted(out["written"]) == ["1.alice.json", "1.releases.json", "2.snapshot.json",
                                      "2.targets.json", "timestamp.json"]
    cli("repo", "verify", str(path))


def test_init_bad_arguments_generate_no_key(home, no_token_env, tmp_path):
    cli = Cli(home, dict(no_token_env))
    for args, expected in ((["--root-threshold", "2"], "root threshold 2"),
                           (["--expires", "nope=3"], "unknown role"),
                           (["--expires", "timestamp=0"], "positive number")):
        assert expected in cli.fails("repo", "init", str(tmp_path / "r"), *args).error_lines[0]
    assert tree_digest(home) == {} and not (tmp_path / "r").exists()


def test_a_token_removed_mid_way_leaves_the_repository_unchanged(softhsm, tmp_path):
    """The root token disappears between login and signature: a clear error, nothing written."""
    import subprocess

    from hsmsign.config import TokenConfig
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.repository import HsmsignRepository
    from hsmsign.secrets import Secrets
    from hsmsign.signing import SigningService

    softhsm.add_token("removable")
    env = clean_environ(**{**softhsm.env(), **passphrase_env(), "HSMSIGN_TOKEN_LABEL": "removable"})
    path = tmp_path / "repo"
    Cli(tmp_path / "home", env)("repo", "init", str(path))
    before = tree_digest(path)
    stores = KeyStores(tmp_path / "home", Secrets(environ=env),
                       TokenConfig(module=softhsm.module, label="removable", explicit=True))
    try:
        stores.token.rescan()  # this process loaded SoftHSM before the token existed
        stores.token.login()  # the token was there when the command started
        subprocess.run(["softhsm2-util", "--delete-token", "--token", "removable"], check=True,
                       capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(softhsm.conf)})
        repo = HsmsignRepository(path, SigningService(stores))
        from hsmsign.errors import HsmsignError

        with pytest.raises(HsmsignError, match="the token stopped answering while"):
            repo.refresh(["root"], 400)
            repo.commit()
    finally:
        stores.token.rescan()  # leave this process's SoftHSM without the deleted token
        stores.close()
    assert tree_digest(path) == before


@pytest.mark.parametrize("missing", [{"HSMSIGN_TOKEN_LABEL": "no-such-token"},
                                     {"HSMSIGN_PKCS11_MODULE": "/nonexistent/libpkcs11.so"}])
def test_a_configured_token_that_is_absent_is_said_never_silent(repo, missing):
    """The root key is on the token. With the token configured but not there, nothing passes
    it over in silence: a change that needs root says why root did not sign, a refresh says
    why root was skipped, and what the file keys can do (timestamp, for a cron job) is done."""
    cli, path = repo
    expected = "no token" if "HSMSIGN_TOKEN_LABEL" in missing else "nonexistent"
    out = json.loads(cli("repo", "refresh", str(path), "--within", "400", "--json",
                         env=missing).stdout)
    assert out["refreshed"] == ["targets", "snapshot", "timestamp"]
    assert out["skipped"][0].startswith("root:") and "the configured token is not present" \
        in out["skipped"][0] and expected in out["skipped"][0]
    cli("repo", "verify", str(path))
    targets_key = keyid_of(cli, path, "targets")
    new = json.loads(cli("key", "generate", "targets", "--json").stdout)["keyid"]
    out = cli("rotate", str(path), "targets", "--add-key", new, "--remove-key", targets_key,
              env=missing)
    assert "warning: the configured token is not present, so its keys did not sign" in out.stderr
    assert expected in out.stderr and "root v2: 0/1 signatures" in out.stderr
    status = cli("repo", "status", str(path), env=missing)
    assert "warning: token keys not counted as here" in status.stderr
    cli("sign", str(path), "root")  # the token is back: root is signed, the set verifies
    cli("repo", "verify", str(path))


def test_commands_on_a_directory_that_is_not_a_repository(repo, tmp_path):
    cli, _ = repo
    plain = tmp_path / "plain"
    plain.mkdir()
    missing = str(tmp_path / "missing")
    for args in (["repo", "refresh", missing], ["repo", "refresh", str(plain)],
                 ["repo", "status", missing], ["repo", "verify", missing],
                 ["target", "list", missing], ["delegation", "list", missing],
                 ["sign", missing, "root"], ["signer", "remove", "alice", missing],
                 ["target", "add", str(plain), "x", "--length", "1", "--sha256", "e" * 64]):
        result = cli.fails(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "is not an hsmsign repository" in result.error_lines[0], args
    assert list(plain.iterdir()) == []  # not even a lock file
    assert not (tmp_path / "missing").exists()


def test_target_changes_are_counted_and_a_change_that_changes_nothing_writes_nothing(repo, tmp_path):
    cli, path = repo
    cli("target", "add", str(path), "a", "--length", "1", "--sha256", "a" * 64)
    before = tree_digest(path)
    same = cli("target", "add", str(path), "a", "--length", "1", "--sha256", "a" * 64)
    assert "already has these 1 target(s) as given; nothing changed" in same.stderr
    assert tree_digest(path) == before
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"a": {"length": 2, "hashes": {"sha256": "b" * 64}},
                                    "b": {"length": 1, "hashes": {"sha256": "c" * 64}},
                                    "c": {"length": 1, "hashes": {"sha256": "d" * 64}}}))
    out = cli("target", "add", str(path), "--from-manifest", str(manifest))
    assert "added 2 target(s) to targets; replaced 1 (new length or hashes)" in out.stderr
    listed = {t["path"]: t["length"] for t in json.loads(cli("target", "list", str(path),
                                                             "--json").stdout)}
    assert listed == {"a": 2, "b": 1, "c": 1}
    before = tree_digest(path)
    for text, expected in (("[1, 2]", "a JSON manifest is an object"),
                           ("{}", "lists no targets"),
                           ("path,length,sha256\n", "lists no targets")):
        bad = tmp_path / ("bad.csv" if text.startswith("path") else "bad.json")
        bad.write_text(text)
        result = cli.fails("target", "add", str(path), "--from-manifest", str(bad))
        assert expected in result.error_lines[0], text
    assert "unknown role 'relases'" in cli.fails("target", "list", str(path), "--role",
                                                  "relases").error_lines[0]
    assert tree_digest(path) == before


def test_signer_add_with_paths_for_nested_targets(repo):
    cli, path = repo
    bob = json.loads(cli("key", "generate", "bob", "--json").stdout)["keyid"]
    cli("signer", "add", "bob", "--key", bob, "--path", "app/*", str(path))
    delegations = {d["role"]: d for d in json.loads(cli("delegation", "list", str(path),
                                                        "--json").stdout)}
    assert delegations["bob"]["paths"] == ["app/*"]
    assert delegations["releases"]["paths"] == ["app/*"]
    cli("target", "add", str(path), "app/v1.tgz", "--length", "1", "--sha256", "e" * 64,
        "--role", "bob")
    cli("repo", "verify", str(path))
    # The same again changes nothing: no new versions.
    before = tree_digest(path)
    again = json.loads(cli("signer", "add", "bob", "--key", bob, "--path", "app/*", str(path),
                           "--json").stdout)
    assert again["written"] == [] and tree_digest(path) == before


def test_sign_says_when_the_keys_here_have_already_signed(repo):
    cli, path = repo
    out = cli("sign", str(path), "root")
    root_key = keyid_of(cli, path, "root")
    assert f"root v1 is already signed by the key(s) here ({root_key[:7]}); nothing changed" \
        in out.stderr
    assert "signed now: none" in out.stderr


def test_sign_with_a_key_that_is_not_the_roles_is_an_error(repo, tmp_path):
    cli, path = repo
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmsign.keys import key_id, public_key_pem

    alice = json.loads(cli("key", "generate", "alice", "--json").stdout)["keyid"]
    bob = ec.generate_private_key(ec.SECP256R1()).public_key()  # held on another machine
    (tmp_path / "bob.pub").write_bytes(public_key_pem(bob))
    cli("delegation", "add", str(path), "releases", "--key", alice, "--key", str(tmp_path / "bob.pub"),
        "--threshold", "2")
    targets_key, root_key = keyid_of(cli, path, "targets"), keyid_of(cli, path, "root")
    before = tree_digest(path)
    error = cli.fails("sign", str(path), "releases", "--key", targets_key).error_lines[0]
    shown = ", ".join(sorted([alice[:7], key_id(bob)[:7]]))
    assert error == (f"error: key {targets_key[:7]} is not a key of releases; releases's keys are "
                     f"{shown}, and this machine holds {alice[:7]}; nothing changed"), error
    error = cli.fails("sign", str(path), "root", "--key", alice, "--key", root_key).error_lines[0]
    assert f"key {alice[:7]} is not a key of root; root's keys are {root_key[:7]}" in error
    assert tree_digest(path) == before
    cli("sign", str(path), "releases", "--key", alice)  # one of its keys: fine


def test_refresh_json_says_what_was_refreshed_and_skipped(repo, env):
    cli, path = repo
    no_root = Cli(cli.home, {k: v for k, v in env.items()
                             if not k.startswith(("HSMSIGN_PKCS11", "HSMSIGN_TOKEN", "SOFTHSM"))})
    out = json.loads(no_root("repo", "refresh", str(path), "--within", "400", "--json").stdout)
    assert out["refreshed"] == ["targets", "snapshot", "timestamp"]
    assert [s.split(":")[0] for s in out["skipped"]] == ["root"]
    assert "timestamp.json" in out["written"]


def test_verify_against_another_repositorys_root_says_so(repo, tmp_path, env):
    cli, path = repo
    other = tmp_path / "other"
    cli("repo", "init", str(other))
    cli("rotate", str(path), "targets", "--add-key",
        json.loads(cli("key", "generate", "targets", "--json").stdout)["keyid"])
    cli("rotate", str(path), "root", "--add-key",
        json.loads(cli("key", "generate", "root", "--store", "file", "--json").stdout)["keyid"])
    result = cli.fails("repo", "verify", str(path), "--root",
                       str(other / "metadata" / "1.root.json"))
    assert "not signed by a threshold of the keys of the trusted root you gave" \
        in result.error_lines[0]


def test_init_root_store_and_its_hint(env, tmp_path):
    cli = Cli(tmp_path / "home", {**env, "HSMSIGN_TOKEN_LABEL": "no-such-token"})
    refused = cli.fails("repo", "init", str(tmp_path / "r"))
    assert refused.error_lines[0].endswith("or pass --root-store file to keep the root key in a file")
    assert not (tmp_path / "r").exists()
    out = cli("repo", "init", str(tmp_path / "r"), "--root-store", "file")
    assert "generated root key" in out.stderr and "in file (asked for a file key)" in out.stderr
    keys = json.loads(cli("key", "list", "--json").stdout)
    assert {k["role"]: k["store"] for k in keys}["root"] == "file"
    assert "drop it" in cli.fails("repo", "init", str(tmp_path / "r2"), "--root-store", "file",
                                  "--root-key", keys[0]["keyid"]).error_lines[0]


def test_init_asks_every_secret_before_it_makes_a_key(softhsm, tmp_path):
    """Only the PIN is there: the passphrase of the targets key is missing. Nothing is made,
    not even the root key on the token, which a retry would otherwise pile up."""
    env = clean_environ(**softhsm.env())
    cli = Cli(tmp_path / "home", env)
    token_keys = lambda: {k["keyid"] for k in json.loads(cli("key", "list", "--json").stdout)  # noqa: E731
                          if k["store"] == "token"}
    before = token_keys()
    result = cli.fails("repo", "init", str(tmp_path / "r"))
    assert "HSMSIGN_TARGETS_PASSPHRASE" in result.error_lines[0]
    assert "generated" not in result.stderr
    assert token_keys() == before and not (tmp_path / "r").exists()
    assert not list((tmp_path / "home").rglob("*.key"))


def test_links_planted_in_a_repository_are_never_written_through(repo, tmp_path):
    cli, path = repo
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    victim.chmod(0o600)
    payload = tmp_path / "v2.txt"
    payload.write_bytes(b"release 2\n")
    import hashlib

    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    (path / "targets" / "app").mkdir(parents=True)
    # The published name (hash-prefixed) as a link out of the repository: refused.
    (path / "targets" / "app" / f"{digest}.v2.txt").symlink_to(victim)
    before = tree_digest(path)
    result = cli.fails("target", "add", str(path), "app/v2.txt", "--file", str(payload))
    assert "is there and is not a regular file" in result.error_lines[0]
    assert tree_digest(path) == before
    # The lock file as a link: refused, and nothing is created where it points.
    (path / "targets" / "app" / f"{digest}.v2.txt").unlink()
    (path / ".hsmsign.lock").unlink(missing_ok=True)
    (path / ".hsmsign.lock").symlink_to(tmp_path / "created-by-lock")
    result = cli.fails("repo", "refresh", str(path))
    assert "is a symbolic link; remove it" in result.error_lines[0]
    assert not (tmp_path / "created-by-lock").exists()
    (path / ".hsmsign.lock").unlink()
    assert victim.read_text() == "not yours" and victim.stat().st_mode & 0o777 == 0o600
    # Whatever the umask, the repository's directories and files are the owner's to change
    # and everyone's to read (a web server serves them).
    old = os.umask(0)
    try:
        cli("target", "add", str(path), "app/v2.txt", "--file", str(payload))
        cli("repo", "init", str(tmp_path / "new" / "repo"))
        os.umask(0o077)
        cli("repo", "init", str(tmp_path / "tight" / "repo"))
        cli("target", "add", str(tmp_path / "tight" / "repo"), "t/v2.txt", "--file", str(payload))
    finally:
        os.umask(old)
    for root in (path, tmp_path / "new" / "repo", tmp_path / "tight" / "repo"):
        for item in [root, *root.rglob("*")]:
            if item.name == ".hsmsign.lock":
                continue  # the lock is the writer's business
            expected = 0o755 if item.is_dir() else 0o644
            assert item.stat().st_mode & 0o777 == expected, (item, oct(item.stat().st_mode))
    assert (path / "targets" / "app" / f"{digest}.v2.txt").read_bytes() == b"release 2\n"


def test_verify_from_a_given_root_blames_the_right_root(repo, tmp_path, env):
    """Root v2 signed by the old root key but not yet by its own new key: verifying from v1
    says v2 lacks signatures, not that the root given is another repository's."""
    cli, path = repo
    other = Cli(tmp_path / "other-home", env)
    new = json.loads(other("key", "generate", "root", "--store", "file", "--json").stdout)["keyid"]
    pem = tmp_path / "new-root.pub"
    other("key", "export", new, "-o", str(pem))
    cli("rotate", str(path), "root", "--add-key", str(pem), "--remove-key", keyid_of(cli, path, "root"))
    # hsmsign stages such a root (issue 15); an older hsmsign, or a hand, put it in metadata/.
    shutil.copy(path / "staged" / "2.root.json", path / "metadata" / "2.root.json")
    error = cli.fails("repo", "verify", str(path), "--root",
                      str(path / "metadata" / "1.root.json")).error_lines[0]
    assert "valid signatures did not meet threshold for root" in error, error
    assert "trusted root you gave" not in error
