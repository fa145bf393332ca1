"""Staged changes (issue 15): custodians sign on their own machines, and a TUF client reading
metadata/ never sees half-signed metadata. Checked with python-tuf's ngclient over HTTP."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from conftest import Cli, clean_environ, passphrase_env, tree_digest
from test_repository import Server, updater


@pytest.fixture(scope="module")
def custodians(softhsm, tmp_path_factory):
    """Three custodians, each with a home and a token of their own, each with a root key."""
    base = tmp_path_factory.mktemp("custodians")
    out = {}
    for name in ("ana", "ben", "cho"):
        softhsm.add_token(f"staging-{name}")
        env = clean_environ(**{**softhsm.env(), "HSMSIGN_TOKEN_LABEL": f"staging-{name}"})
        who = Cli(base / name, env)
        keyid = json.loads(who("key", "generate", "root", "--store", "token", "--json").stdout)["keyid"]
        pem = base / f"{name}.pub"
        who("key", "export", keyid, "-o", str(pem))
        out[name] = (who, keyid, pem)
    return out


@pytest.fixture(scope="module")
def origin(softhsm, prepared_home, tmp_path_factory):
    """The repository owner's home (root key on the token, online keys in files) and a
    repository, made once."""
    base = tmp_path_factory.mktemp("origin")
    shutil.copytree(prepared_home, base / "home", symlinks=True)
    owner = Cli(base / "home", clean_environ(**softhsm.env(), **passphrase_env()))
    keys = {r["role"]: r["keyid"] for r in json.loads(owner("key", "list", "--json").stdout)}
    owner("repo", "init", str(base / "repo"), "--targets-key", keys["targets"],
          "--snapshot-key", keys["snapshot"], "--timestamp-key", keys["timestamp"])
    return base / "home", base / "repo"


@pytest.fixture
def repo(origin, tmp_path, softhsm):
    home, path = origin
    shutil.copytree(home, tmp_path / "home", symlinks=True)
    shutil.copytree(path, tmp_path / "repo", symlinks=True)
    return Cli(tmp_path / "home", clean_environ(**softhsm.env(), **passphrase_env())), tmp_path / "repo"


@pytest.fixture
def server(repo):
    s = Server(repo[1])
    yield s
    s.close()


def root_keyid(cli: Cli, path: Path) -> str:
    return json.loads(cli("repo", "status", str(path), "--json").stdout)["roles"][0]["keys"][0]["keyid"]


def staged(cli: Cli, path: Path) -> dict[str, dict]:
    return {r["role"]: r for r in json.loads(cli("stage", "list", str(path), "--json").stdout)["staged"]}


def test_two_of_three_root_rotation_signed_by_custodians_on_their_own_machines(
        repo, server, custodians, tmp_path):
    owner, path = repo
    client = tmp_path / "client"

    def client_refreshes() -> int:
        """python-tuf's client over HTTP refreshes; returns the root version it trusts."""
        up = updater(path, server, client)
        up.refresh()
        owner("repo", "verify", str(path))
        return json.loads((client / "metadata" / "root.json").read_text())["signed"]["version"]

    assert client_refreshes() == 1
    old = root_keyid(owner, path)
    ana, ben, cho = (custodians[n] for n in ("ana", "ben", "cho"))
    out = owner("rotate", str(path), "root", "--remove-key", old, "--threshold", "2",
                *(a for c in (ana, ben, cho) for a in ("--add-key", str(c[2]))))
    assert "staged staged/2.root.json" in out.stderr
    assert "needs 2 more signature(s) from:" in out.stderr
    assert not (path / "metadata" / "2.root.json").exists()
    root = staged(owner, path)["root"]
    assert root["version"] == 2 and not root["complete"] and root["stale"] is None
    new_keys, old_keys = root["thresholds"]
    assert new_keys["threshold"] == 2 and new_keys["signed"] == []
    assert sorted(new_keys["unsigned"]) == sorted(c[1] for c in (ana, ben, cho))
    assert old_keys["signed"] == [old] and old_keys["met"]
    assert client_refreshes() == 1

    # Ana signs on the repository with her own home and token.
    ana[0]("sign", str(path), "root")
    root = staged(owner, path)["root"]
    assert root["thresholds"][0]["signed"] == [ana[1]] and not root["complete"]
    assert "STAGED" in owner("repo", "status", str(path)).stdout
    assert client_refreshes() == 1

    # Ben gets a copy on a USB stick, signs it with `sign --file`, and brings it back.
    usb = tmp_path / "usb"
    usb.mkdir()
    owner("stage", "export", str(path), "root", "-o", str(usb))
    copy = usb / "2.root.json"
    signed = ben[0]("sign", "--file", str(copy))
    assert f"with: {ben[1][:7]}" in signed.stderr
    assert client_refreshes() == 1
    out = owner("stage", "merge", str(path), str(copy))
    assert f"root: added signature(s) by {ben[1][:7]}" in out.stderr
    assert "wrote metadata/2.root.json" in out.stderr
    assert staged(owner, path) == {}
    assert client_refreshes() == 2
    published = json.loads((path / "metadata" / "2.root.json").read_text())
    assert {s["keyid"] for s in published["signatures"]} == {old, ana[1], ben[1]}


def test_a_delegated_role_whose_key_is_elsewhere_is_staged_until_its_signer_signs(
        repo, server, softhsm, tmp_path):
    owner, path = repo
    softhsm.add_token("staging-signer")
    signer = Cli(tmp_path / "signer", clean_environ(**{**softhsm.env(),
                                                    "HSMSIGN_TOKEN_LABEL": "staging-signer"}))
    keyid = json.loads(signer("key", "generate", "builds", "--store", "token", "--json").stdout)["keyid"]
    pem = tmp_path / "builds.pub"
    signer("key", "export", keyid, "-o", str(pem))
    owner("delegation", "add", str(path), "builds", "--key", str(pem), "--path", "builds/*")
    owner("target", "add", str(path), "builds/app.tar.gz", "--length", "4", "--sha256", "e" * 64,
          "--role", "builds")
    assert set(staged(owner, path)) == {"targets", "builds"}
    owner("repo", "verify", str(path))
    up = updater(path, server, tmp_path / "client")
    up.refresh()
    assert up.get_targetinfo("builds/app.tar.gz") is None

    # The signer signs builds; targets and builds go out, snapshot and timestamp wait for
    # their keys, which the signer does not have.
    out = signer("sign", str(path), "builds")
    assert "wrote metadata/2.targets.json" in out.stderr and "wrote metadata/1.builds.json" in out.stderr
    assert set(staged(owner, path)) == {"snapshot", "timestamp"}
    owner("repo", "verify", str(path))
    before = tree_digest(path)
    error = signer.fails("publish", str(path)).error_lines[0]
    assert "not published: snapshot" in error and "where they are" in error
    assert tree_digest(path) == before
    # Snapshot and timestamp follow where their keys are.
    out = owner("publish", str(path))
    assert "wrote metadata/timestamp.json" in out.stderr
    assert staged(owner, path) == {}
    owner("repo", "verify", str(path))
    up = updater(path, server, tmp_path / "client")
    up.refresh()
    assert up.get_targetinfo("builds/app.tar.gz").hashes == {"sha256": "e" * 64}


def test_merge_refuses_a_changed_file_a_foreign_or_a_bad_signature(repo, custodians, tmp_path):
    owner, path = repo
    ana, ben = custodians["ana"], custodians["ben"]
    owner("rotate", str(path), "root", "--add-key", str(ana[2]), "--add-key", str(ben[2]),
          "--remove-key", root_keyid(owner, path), "--threshold", "2")
    good = tmp_path / "2.root.json"
    owner("stage", "export", str(path), "root", "-o", str(good))
    ana[0]("sign", "--file", str(good))
    doc = json.loads(good.read_text())
    before = tree_digest(path)

    def refused(name: str, change) -> str:
        bad = json.loads(json.dumps(doc))
        change(bad)
        file = tmp_path / name / "2.root.json"
        file.parent.mkdir()
        file.write_text(json.dumps(bad))
        error = owner.fails("stage", "merge", str(path), str(good), str(file)).error_lines[0]
        assert str(file) in error and "nothing changed" in error
        assert tree_digest(path) == before
        return error

    def changed(d):
        d["signed"]["roles"]["root"]["threshold"] = 1
    assert "signed part differs" in refused("changed", changed)

    def foreign(d):
        d["signatures"].append({"keyid": "ab" * 32, "sig": "cd" * 64})
    assert "not a key of root" in refused("foreign", foreign)

    def bad_signature(d):
        for s in d["signatures"]:
            if s["keyid"] == ana[1]:
                s["sig"] = "00" + s["sig"][2:]
    assert "does not verify" in refused("bad", bad_signature)
    # The good copy alone is taken: one more signature, still staged (2 of 2 needed).
    owner("stage", "merge", str(path), str(good))
    assert staged(owner, path)["root"]["thresholds"][0]["signed"] == [ana[1]]


def test_stale_staging_is_marked_and_refused_at_publish(repo, custodians, tmp_path, softhsm):
    owner, path = repo
    ana = custodians["ana"]
    owner("rotate", str(path), "root", "--add-key", str(ana[2]), "--threshold", "2")
    aside = tmp_path / "2.root.json"
    shutil.copy(path / "staged" / "2.root.json", aside)
    owner("stage", "discard", str(path), "root")
    assert staged(owner, path) == {}
    # Meanwhile another root v2 is published (a key here, threshold 1: signed at once).
    here = json.loads(owner("key", "generate", "root", "--store", "token", "--json").stdout)["keyid"]
    out = owner("rotate", str(path), "root", "--add-key", here)
    assert "wrote metadata/2.root.json" in out.stderr
    shutil.copy(aside, path / "staged" / "2.root.json")
    ana[0]("sign", str(path), "root", ok=False)  # a custodian signing it cannot publish it
    assert "base moved on" in staged(owner, path)["root"]["stale"]
    before = tree_digest(path)
    error = owner.fails("publish", str(path)).error_lines[0]
    assert "staged root is stale" in error and "stage discard" in error
    assert tree_digest(path) == before
    owner("repo", "verify", str(path))


def test_expired_staging_is_marked_and_refused_at_publish(repo, tmp_path):
    owner, path = repo
    config = json.loads((path / "hsmsign.json").read_text())
    config["expires"]["delegation"] = 1 / 86400  # a delegated role's versions live one second
    (path / "hsmsign.json").write_text(json.dumps(config))
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmsign.keys import public_key_pem

    pem = tmp_path / "far.pub"  # a key on someone else's machine
    pem.write_bytes(public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    owner("delegation", "add", str(path), "far", "--key", str(pem))
    time.sleep(1.5)
    assert "expired on" in staged(owner, path)["far"]["stale"]
    assert "STALE: it expired" in owner("stage", "list", str(path)).stdout
    before = tree_digest(path)
    error = owner.fails("publish", str(path)).error_lines[0]
    assert "staged far is stale (it expired on" in error
    assert tree_digest(path) == before
    owner("stage", "discard", str(path))
    assert staged(owner, path) == {} and not list((path / "staged").iterdir())
    owner("repo", "verify", str(path))


def test_refresh_stages_a_named_role_whose_keys_are_elsewhere_and_cron_skips_it(repo, softhsm):
    owner, path = repo
    no_token = Cli(owner.home, clean_environ(**passphrase_env(), SOFTHSM2_CONF=str(softhsm.conf),
                                             HSMSIGN_PKCS11_MODULE=softhsm.module,
                                             HSMSIGN_TOKEN_LABEL="no-such-token"))
    out = json.loads(no_token("repo", "refresh", str(path), "--within", "400", "--json").stdout)
    assert [s.split(":")[0] for s in out["skipped"]] == ["root"] and out["staged"] == []
    out = json.loads(no_token("repo", "refresh", str(path), "--role", "root", "--within", "400",
                              "--json").stdout)
    assert out["staged"] == ["2.root.json"] and not out["written"]
    assert out["waiting"]["root"][0]["unsigned"] == [root_keyid(owner, path)]
    owner("repo", "verify", str(path))
    # Where the root key is, `sign` publishes it.
    assert "wrote metadata/2.root.json" in owner("sign", str(path), "root").stderr
    assert staged(owner, path) == {}
    owner("repo", "verify", str(path))


def test_sign_file_takes_the_role_from_the_name_or_type_and_refuses_nonsense(repo, tmp_path, custodians):
    owner, path = repo
    ana = custodians["ana"]
    lone = tmp_path / "lone.json"
    shutil.copy(path / "metadata" / "1.root.json", lone)
    out = ana[0]("sign", "--file", str(lone))
    assert "no key here signs root v1" in out.stderr
    error = ana[0].fails("sign", "--file", str(tmp_path / "missing.json")).error_lines[0]
    assert "does not exist" in error
    (tmp_path / "junk.json").write_text("{}")
    assert "not TUF metadata" in ana[0].fails("sign", "--file", str(tmp_path / "junk.json")).error_lines[0]
    assert "either REPO ROLE or --file" in ana[0].fails("sign", str(path), "root", "--file",
                                                         str(lone)).error_lines[0]
    targets = tmp_path / "2.targets.json"
    shutil.copy(path / "metadata" / "1.targets.json", targets)
    before = targets.read_bytes()
    error = owner.fails("sign", "--file", str(targets), "--previous", str(lone)).error_lines[0]
    assert "--previous ROOT_FILE is for signing a root" in error and targets.read_bytes() == before


def test_cron_refresh_while_a_change_is_staged_publishes_what_clients_see(repo, server, tmp_path):
    """A cron `repo refresh` stages nothing: it re-signs the published roles (not the staged
    ones), publishes them, and the staged change it overtook is stale."""
    owner, path = repo
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmsign.keys import public_key_pem

    pem = tmp_path / "far.pub"  # the key of a signer who is not here
    pem.write_bytes(public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    owner("delegation", "add", str(path), "builds", "--key", str(pem), "--path", "builds/*")
    owner("target", "add", str(path), "builds/a.tgz", "--length", "4", "--sha256", "e" * 64,
          "--role", "builds")
    assert set(staged(owner, path)) == {"targets", "builds"}
    out = owner("target", "add", str(path), "builds/b.tgz", "--length", "4", "--sha256", "f" * 64,
                "--role", "builds")
    assert "snapshot v" not in out.stderr and "timestamp v" not in out.stderr  # not signed out
    waiting = {p.name: p.read_bytes() for p in (path / "staged").iterdir()}
    timestamp = (path / "metadata" / "timestamp.json").read_bytes()
    out = json.loads(owner("repo", "refresh", str(path), "--within", "400", "--json").stdout)
    assert out["refreshed"] == ["root", "targets", "snapshot", "timestamp"]
    assert out["staged"] == [] and "2.root.json" in out["written"] and "timestamp.json" in out["written"]
    assert (path / "metadata" / "timestamp.json").read_bytes() != timestamp
    assert {p.name: p.read_bytes() for p in (path / "staged").iterdir()} == waiting
    owner("repo", "verify", str(path))
    up = updater(path, server, tmp_path / "client")
    up.refresh()
    assert up.get_targetinfo("builds/a.tgz") is None
    assert json.loads((tmp_path / "client" / "metadata" / "root.json").read_text())["signed"]["version"] == 2
    # The staged targets v2 was made on targets v1; v2 is published now: stale, refused.
    assert "base moved on" in staged(owner, path)["targets"]["stale"]
    before = tree_digest(path)
    assert "staged targets is stale" in owner.fails("publish", str(path)).error_lines[0]
    assert tree_digest(path) == before
