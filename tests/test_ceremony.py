"""The root ceremony: a rehearsal from a plan on three SoftHSM tokens, and the interactive flow
on a pseudo-terminal. Results are checked with python-tuf's client and the transcript checker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from conftest import SO_PIN, Cli, clean_environ, passphrase_env, tree_digest
from test_repository import Server, updater

PIN = "246810"


class Tokens:
    """A SoftHSM token directory of its own, with one token per custodian."""

    def __init__(self, root: Path):
        (root / "tokens").mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {root / 'tokens'}\nlog.level = ERROR\n")

    def add(self, label: str) -> None:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN,
                        "--so-pin", SO_PIN], check=True, capture_output=True,
                       env={**os.environ, "SOFTHSM2_CONF": str(self.conf)})

    def env(self, **extra: str) -> dict[str, str]:
        return clean_environ(SOFTHSM2_CONF=str(self.conf),
                             HSMSIGN_PKCS11_MODULE="/usr/lib/softhsm/libsofthsm2.so",
                             **passphrase_env(), **extra)


def write_plan(path: Path, names: list[str], threshold: int, *, backup: list[Path] = (),
               confirm: bool = True) -> Path:
    lines = [f"threshold = {threshold}", "[expires]", "root = 365", "timestamp = 1"]
    for name in names:
        lines += ["[[custodian]]", f'name = "{name}"', f'token = "pkcs11:token={name}"',
                  f'pin_env = "{name.upper()}_PIN"']
    lines += ["[online_keys]", 'store = "file"']
    if backup:
        lines += ["[backup]", "destinations = [" + ", ".join(f'"{d}"' for d in backup) + "]"]
    lines += ["[confirm]", f"all = {'true' if confirm else 'false'}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def three(tmp_path) -> Tokens:
    tokens = Tokens(tmp_path / "hsm")
    for name in ("alice", "bob", "carol"):
        tokens.add(name)
    return tokens


def pins(*names: str) -> dict[str, str]:
    return {f"{n.upper()}_PIN": PIN for n in names}


def test_rehearsal_from_a_plan_is_verified_by_the_client_and_the_transcript(three, tmp_path):
    usb = [tmp_path / "usb1", tmp_path / "usb2"]
    for d in usb:
        d.mkdir()
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob", "carol"], 2, backup=usb)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob", "carol"),
                                           HSMSIGN_BACKUP_PASSPHRASE="backup passphrase for usb"))
    repo = tmp_path / "repo"
    run = cli("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network", "--json")
    result = json.loads(run.stdout)
    assert len(result["root_keys"]) == 3 and result["threshold"] == 2
    # The "USB drives" here are directories on the laptop's own disk: preflight says so.
    assert "is on the same file system as the repository" in " ".join(run.stderr.split())
    root = json.loads((repo / "metadata" / "1.root.json").read_text())
    assert root["signed"]["roles"]["root"]["threshold"] == 2
    assert sorted(root["signed"]["roles"]["root"]["keyids"]) == sorted(result["root_keys"])
    assert {s["keyid"] for s in root["signatures"]} == set(result["root_keys"])
    # Root keys are on the three tokens; the online keys are files in the home.
    listed = json.loads(cli("key", "list", "--json").stdout)
    assert sorted(r["role"] for r in listed if r["store"] == "file") == ["snapshot", "targets", "timestamp"]
    # python-tuf's client accepts it.
    server = Server(repo)
    try:
        up = updater(repo, server, tmp_path / "client")
        up.refresh()
        assert up.get_targetinfo("nothing-yet") is None
    finally:
        server.close()
    # The transcript verifies, and any edit to it is caught.
    transcript = repo / "ceremony-transcript.json"
    out = cli("ceremony", "verify-transcript", str(transcript), str(repo), "--json")
    assert json.loads(out.stdout)["threshold"] == 2
    assert len(json.loads(out.stdout)["signed_by"]) == 3
    assert (repo / "ceremony-transcript.md").read_text().startswith("# hsmsign ceremony transcript")
    doc = json.loads(transcript.read_text())
    steps = [e["step"] for e in doc["entries"]]
    assert steps[0] == "preflight" and steps.count("root key") == 3 and steps[-1] == "complete"
    edited = json.loads(transcript.read_text())
    edited["entries"][1]["data"]["keyid"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert "was edited afterwards" in cli.fails("ceremony", "verify-transcript",
                                                str(tmp_path / "edited.json"), str(repo)).error_lines[0]
    dropped = json.loads(transcript.read_text())
    del dropped["entries"][2]
    (tmp_path / "dropped.json").write_text(json.dumps(dropped))
    assert "out of order" in cli.fails("ceremony", "verify-transcript",
                                       str(tmp_path / "dropped.json"), str(repo)).error_lines[0]
    # The online keys work: add a target with them.
    cli("target", "add", str(repo), "hello", "--length", "1", "--sha256", "a" * 64)
    cli("repo", "verify", str(repo))
    # Both USB copies hold the same verified archive, recorded in the transcript.
    archives = [p for d in usb for p in d.iterdir()]
    assert len(archives) == 2 and archives[0].read_bytes() == archives[1].read_bytes()
    recorded = next(e for e in doc["entries"] if e["step"] == "backups")["data"]["archives"]
    assert {a["path"] for a in recorded} == {str(p) for p in archives}
    # Restored into a fresh home, the backup signs a new snapshot.
    fresh = Cli(tmp_path / "fresh-home", cli.env)
    fresh("backup", "restore", str(archives[0]))
    before = json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]["version"]
    fresh("repo", "refresh", str(repo), "--role", "snapshot", "--role", "timestamp", "--within", "400")
    after = json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]
    assert after["version"] == before + 1
    fresh("repo", "verify", str(repo))
    # The record still checks after that routine work: timestamp.json is noted as replaced,
    # the versioned files are the ceremony's. A versioned file changed is still caught.
    again = cli("ceremony", "verify-transcript", str(transcript), str(repo), "--json")
    assert json.loads(again.stdout)["replaced_since"] == ["timestamp.json"]
    one = repo / "metadata" / "1.targets.json"
    changed = json.loads(one.read_text())
    changed["signed"]["expires"] = "2099-01-01T00:00:00Z"
    one.write_text(json.dumps(changed))
    assert "metadata/1.targets.json is not the file the ceremony wrote" in cli.fails(
        "ceremony", "verify-transcript", str(transcript), str(repo)).error_lines[0]


def test_command_line_wins_over_the_plan(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob", "carol"], 3)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob")))
    result = json.loads(cli("ceremony", "root", str(tmp_path / "repo"), "--plan", str(plan),
                            "--tokens", "2", "--threshold", "1", "--allow-network",
                            "--json").stdout)
    assert len(result["root_keys"]) == 2 and result["threshold"] == 1
    record = json.loads((tmp_path / "repo" / "ceremony-transcript.json").read_text())
    preflight = next(e for e in record["entries"] if e["step"] == "preflight")["data"]
    assert preflight["left_out_of_the_plan"] == ["carol"]  # never silently
    assert preflight["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert preflight["confirmations"] == "from the plan (rehearsal)" and preflight["host"]


def test_network_up_is_refused_and_changes_nothing(three, tmp_path):
    from hsmsign.ceremony import network_interfaces_up

    if not network_interfaces_up():
        pytest.skip("no network interface is up on this machine")
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob")))
    error = cli.fails("ceremony", "root", str(tmp_path / "repo"), "--plan", str(plan)).error_lines[0]
    assert "network interfaces are up" in error and "--allow-network" in error
    assert not (tmp_path / "repo").exists() and tree_digest(tmp_path / "home") == {}


def test_offline_namespace_passes_the_network_check(three, tmp_path):
    probe = subprocess.run(["unshare", "-nm", "sh", "-c", "mount -t sysfs sysfs /sys"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -nm)")
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2)
    env = three.env(**pins("alice", "bob"))
    proc = subprocess.run(
        ["unshare", "-nm", "sh", "-c", 'mount -t sysfs sysfs /sys && exec "$@"', "sh",
         sys.executable, "-m", "hsmsign", "--home", str(tmp_path / "home"), "ceremony", "root",
         str(tmp_path / "repo"), "--plan", str(plan), "--json"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "offline" in proc.stderr
    transcript = json.loads((tmp_path / "repo" / "ceremony-transcript.json").read_text())
    assert transcript["entries"][0]["data"]["network_up"] == []


def test_a_missing_token_in_a_plan_run_stops_before_anything_is_written(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob", "dave"], 2)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob", "dave")))
    result = cli.fails("ceremony", "root", str(tmp_path / "repo"), "--plan", str(plan),
                       "--allow-network")
    assert "token 'dave' of dave is not present" in result.error_lines[0]
    # Keys made on alice's and bob's tokens are listed for removal; nothing else exists.
    assert result.stderr.count(" on alice (serial") + result.stderr.count(" on bob (serial") == 2
    assert not (tmp_path / "repo").exists() and tree_digest(tmp_path / "home") == {}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.ceremony-")]


def _spawn_ceremony(tokens: Tokens, tmp_path: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable,
                         ["-m", "hsmsign", "--home", str(tmp_path / "home"), "ceremony", "root",
                          str(tmp_path / "repo"), "--allow-network", *args],
                         env=tokens.env(), encoding="utf-8", timeout=60, dimensions=(50, 200))


def test_interactive_ceremony_with_a_wrong_pin_and_a_token_that_is_not_there(three, tmp_path):
    child = _spawn_ceremony(three, tmp_path, "--threshold", "2", "--tokens", "2")
    child.expect("Name of custodian 1 of 2:")
    child.sendline("alice")
    child.expect_exact("alice's token: yubikey:SERIAL, or the label of a PKCS#11 token:")
    child.sendline("alice")
    child.expect("Name of custodian 2 of 2:")
    child.sendline("erin")
    child.expect_exact("erin's token: yubikey:SERIAL, or the label of a PKCS#11 token:")
    child.sendline("erin")
    child.expect(r"correct\? \[y/N\]")
    child.sendline("y")
    child.expect("Insert token 1 of 2, held by alice")
    child.sendline("")
    child.expect("Enter PIN for token alice: ")
    child.sendline("000000")  # wrong
    child.expect("Wrong PIN")
    child.expect("Enter PIN for token alice: ")
    child.sendline(PIN)
    child.expect(r"written down key ID .*\? \[y/N\]")
    child.sendline("y")
    child.expect("Insert token 2 of 2, held by erin")
    child.sendline("")
    child.expect("token 'erin' is not present")
    three.add("erin")  # the right token is plugged in now
    child.sendline("")
    child.expect("Enter PIN for token erin: ")
    child.sendline(PIN)
    child.expect(r"written down key ID .*\? \[y/N\]")
    child.sendline("y")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 0, child.before
    assert PIN not in child.before
    cli = Cli(tmp_path / "home", three.env())
    cli("repo", "verify", str(tmp_path / "repo"))
    cli("ceremony", "verify-transcript", str(tmp_path / "repo" / "ceremony-transcript.json"),
        str(tmp_path / "repo"))


def _at_alices_key_id(tokens: Tokens, tmp_path: Path, plan: Path) -> pexpect.spawn:
    """An interactive ceremony of `plan`, up to "Has alice written down key ID ...?"."""
    child = _spawn_ceremony(tokens, tmp_path, "--plan", str(plan))
    child.expect(r"correct\? \[y/N\]")
    child.sendline("y")
    child.expect("Insert token 1 of 2, held by alice")
    child.sendline("")
    child.expect("Enter PIN for token alice: ")
    child.sendline(PIN)
    child.expect(r"written down key ID .*\? \[y/N\]")
    return child


def test_abort_half_way_lists_token_keys_and_writes_nothing(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2, confirm=False)
    child = _at_alices_key_id(three, tmp_path, plan)
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    output = child.before.replace("\r", "")
    assert "error: ceremony stopped; nothing was written" in output
    assert "aborted by the operator" in output
    assert "on alice (serial" in output and "hsmsign key remove" in output
    assert not (tmp_path / "repo").exists() and tree_digest(tmp_path / "home") == {}
    # The command shown removes the key, as printed (the token named by its label).
    keyid = re.search(r"([0-9a-f]{64}) on alice", output).group(1)
    command = re.search(r"(HSMSIGN_TOKEN_LABEL=alice hsmsign key remove \S+ --force)", output)
    assert command and keyid in command.group(1)
    cli = Cli(tmp_path / "home", three.env(HSMSIGN_PIN=PIN, HSMSIGN_TOKEN_LABEL="alice"))
    cli("key", "remove", keyid, "--force")
    assert keyid not in cli("key", "list").stdout


def _token_dir(tokens_root: Path, label: str) -> Path:
    """SoftHSM's directory of the token with `label` (its label is in token.object)."""
    return next(d for d in tokens_root.iterdir()
                if label.encode() in (d / "token.object").read_bytes())


def test_a_token_pulled_out_for_the_next_one_is_asked_for_again_to_sign(three, tmp_path):
    """One USB port: alice's token makes way for bob's, and is asked for again when the root
    and the transcript need her signature."""
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2, confirm=False)
    tokens_root = tmp_path / "hsm" / "tokens"
    alice = _token_dir(tokens_root, "alice")
    pulled = tmp_path / "pulled-out"
    child = _at_alices_key_id(three, tmp_path, plan)
    child.sendline("y")
    child.expect("Insert token 2 of 2, held by bob")
    alice.rename(pulled)  # alice pulls hers out; bob plugs his in
    child.sendline("")
    child.expect("Enter PIN for token bob: ")
    child.sendline(PIN)
    child.expect(r"written down key ID .*\? \[y/N\]")
    child.sendline("y")
    child.expect("Insert token 'alice' again, held by alice, to sign the root")
    pulled.rename(alice)
    child.sendline("")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 0, child.before
    cli = Cli(tmp_path / "home", three.env())
    cli("repo", "verify", str(tmp_path / "repo"))
    out = json.loads(cli("ceremony", "verify-transcript", str(tmp_path / "repo" /
                                                              "ceremony-transcript.json"),
                         str(tmp_path / "repo"), "--json").stdout)
    assert len(out["signed_by"]) == 2


def test_ctrl_c_half_way_lists_token_keys_too(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2, confirm=False)
    child = _at_alices_key_id(three, tmp_path, plan)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    output = child.before.replace("\r", "")
    assert child.exitstatus == 1, output
    assert "error: ceremony stopped; nothing was written" in output and "interrupted" in output
    assert "on alice (serial" in output and "nothing was changed" not in output


@pytest.mark.parametrize("change,expected", [
    (("[[custodian]]", "[[custodain]]"), "unknown key 'custodain'"),
    (("threshold = 2", "threshhold = 2"), "unknown key 'threshhold'"),
    (("all = true", 'all = "false"'), "confirm.all must be true or false, not 'false'"),
    (("timestamp = 1", "timestamp = 0"), "expires.timestamp must be a positive number"),
    (('pin_env = "BOB_PIN"', 'pin_env = "BOBS_PIN"'), "no terminal to ask for bob's PIN, and "
                                                        "BOBS_PIN is not set"),
    (("[online_keys]", '[pkcs11]\nmodule = "/nonexistent/libpkcs11.so"\n[online_keys]'),
     "the PKCS#11 module cannot be used"),
])
def test_a_plan_mistake_stops_before_any_key_is_made(three, tmp_path, change, expected):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2)
    plan.write_text(plan.read_text().replace(*change, 1))
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob")))
    result = cli.fails("ceremony", "root", str(tmp_path / "repo"), "--plan", str(plan),
                       "--allow-network")
    assert expected in result.error_lines[0], result.stderr
    assert " on alice (serial" not in result.stderr  # no key was made
    assert not (tmp_path / "repo").exists() and tree_digest(tmp_path / "home") == {}


def test_a_failure_after_the_backups_removes_them_and_writes_nothing(three, tmp_path):
    """The backups are written before the last step; when that step fails (here: something was
    put into REPO meanwhile), the archives of keys never put in use are removed again."""
    usb = tmp_path / "usb"
    usb.mkdir()
    plan = write_plan(tmp_path / "plan.toml", ["alice"], 1, backup=[usb], confirm=False)
    env = three.env(**pins("alice"), HSMSIGN_BACKUP_PASSPHRASE="backup passphrase for usb")
    child = pexpect.spawn(sys.executable, ["-m", "hsmsign", "--home", str(tmp_path / "home"),
                                           "ceremony", "root", str(tmp_path / "repo"), "--plan",
                                           str(plan), "--allow-network"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.expect(r"correct\? \[y/N\]")
    child.sendline("y")
    child.expect("Insert token 1 of 1, held by alice")
    child.sendline("")
    child.expect(r"written down key ID .*\? \[y/N\]")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "stray.txt").write_text("someone else's file")
    child.sendline("y")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    output = child.before.replace("\r", "")
    assert child.exitstatus == 1, output
    assert "6. Backups" in output and "is no longer empty" in output
    assert list(usb.iterdir()) == []
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["stray.txt"]
    assert tree_digest(tmp_path / "home") == {}


def test_unwritable_backup_destination_is_refused_in_preflight(three, tmp_path):
    readonly = tmp_path / "usb-ro"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(readonly)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2, backup=[readonly])
        cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob")))
        error = cli.fails("ceremony", "root", str(tmp_path / "repo"), "--plan", str(plan),
                          "--allow-network").error_lines[0]
        assert f"backup destination {readonly} is not writable" in error
        assert not (tmp_path / "repo").exists() and tree_digest(tmp_path / "home") == {}
        # Nothing was created on a token: preflight comes first.
        assert "hsmsign key remove" not in cli.fails(
            "ceremony", "root", str(tmp_path / "repo"), "--plan", str(plan), "--allow-network").stderr
    finally:
        subprocess.run(["umount", str(readonly)], check=False)


def test_rotate_root_a_custodian_leaves_and_a_client_follows(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob", "carol"], 2)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob", "carol", "dave")))
    repo = tmp_path / "repo"
    first = json.loads(cli("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network",
                           "--json").stdout)
    server = Server(repo)
    try:
        client = tmp_path / "client"
        up = updater(repo, server, client)
        up.refresh()  # this client now trusts root v1
        # Carol leaves; Dave joins. Alice and Bob keep their keys (and sign with them).
        three.add("dave")
        rotation = write_plan(tmp_path / "rotate.toml", ["alice", "bob", "dave"], 2)
        result = json.loads(cli("ceremony", "rotate-root", str(repo), "--plan", str(rotation),
                                "--allow-network", "--json").stdout)
        assert result["root_version"] == 2
        new_root = json.loads((repo / "metadata" / "2.root.json").read_text())["signed"]
        keys = set(new_root["roles"]["root"]["keyids"])
        assert keys & set(first["root_keys"]) == set(first["root_keys"][:2])  # alice, bob kept
        assert len(keys) == 3 and first["root_keys"][2] not in keys  # carol's key is gone
        up = updater(repo, server, client)
        up.refresh()
        assert json.loads((client / "metadata" / "root.json").read_text())["signed"]["version"] == 2
    finally:
        server.close()
    cli("repo", "verify", str(repo))
    out = json.loads(cli("ceremony", "verify-transcript", result["transcript"], str(repo),
                         "--json").stdout)
    assert out["threshold"] == 2 and len(out["signed_by"]) == 3
    # The first transcript still verifies against root v1.
    cli("ceremony", "verify-transcript", str(repo / "ceremony-transcript.json"), str(repo))


def test_rotate_root_stages_the_new_root_when_old_custodians_sign_another_day(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob", "carol"], 2)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob", "carol", "dave")))
    repo = tmp_path / "repo"
    cli("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network")
    server = Server(repo)
    try:
        client = tmp_path / "client"
        updater(repo, server, client).refresh()
        # Alice keeps her key, Dave joins; of the old root's 2-of-3 only Alice is here today.
        three.add("dave")
        rotation = write_plan(tmp_path / "rotate.toml", ["alice", "dave"], 2)
        result = json.loads(cli("ceremony", "rotate-root", str(repo), "--plan", str(rotation),
                                "--allow-network", "--json").stdout)
        assert result["staged"] == "staged/2.root.json"
        assert [n["keys"] for n in result["needs"]] == ["root (previous keys)"]
        assert not (repo / "metadata" / "2.root.json").exists()
        cli("repo", "verify", str(repo))
        updater(repo, server, client).refresh()
        assert "still staged" in cli.fails("ceremony", "verify-transcript", result["transcript"],
                                           str(repo)).error_lines[0]
        # Another day: Carol, who leaves, signs a copy with her old key on her own machine.
        usb = tmp_path / "usb"
        usb.mkdir()
        cli("stage", "export", str(repo), "root", "-o", str(usb))
        shutil.copy(repo / "metadata" / "1.root.json", usb / "1.root.json")
        carol = Cli(tmp_path / "carol", three.env(HSMSIGN_TOKEN_LABEL="carol", HSMSIGN_PIN=PIN))
        out = carol("sign", "--file", str(usb / "2.root.json"))
        assert "signs with --previous ROOT_FILE" in out.stderr
        out = carol("sign", "--file", str(usb / "2.root.json"), "--previous", str(usb / "1.root.json"))
        assert "carry it back" in out.stderr
        assert "wrote metadata/2.root.json" in cli("stage", "merge", str(repo),
                                                   str(usb / "2.root.json")).stderr
        assert not (repo / "staged" / "2.root.json").exists()
        cli("repo", "verify", str(repo))
        updater(repo, server, client).refresh()
        assert json.loads((client / "metadata" / "root.json").read_text())["signed"]["version"] == 2
    finally:
        server.close()
    out = json.loads(cli("ceremony", "verify-transcript", result["transcript"], str(repo),
                         "--json").stdout)
    assert out["threshold"] == 2 and len(out["signed_by"]) == 2


def test_transcript_option_writes_the_record_where_asked(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob", "dave")))
    repo, records = tmp_path / "repo", tmp_path / "records"
    records.mkdir()
    (records / "taken.md").write_text("an earlier ceremony's record\n")
    # Checked in preflight: before any key is made, nothing is written anywhere.
    for given, expected in ((records / "root.md", "give the JSON file's name"),
                            (records / "taken.json", "already exists"),
                            (tmp_path / "missing" / "root.json", "is not a directory")):
        run = cli.fails("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network",
                        "--transcript", str(given))
        assert expected in run.error_lines[0], run.stderr
        assert "hsmsign key remove" not in run.stderr
    assert not repo.exists() and not (tmp_path / "home").exists()
    assert sorted(p.name for p in records.iterdir()) == ["taken.md"]

    first = json.loads(cli("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network",
                           "--transcript", str(records / "root.json"), "--json").stdout)
    assert first["transcript"] == str(records / "root.json")
    assert (records / "root.md").read_text().startswith("# hsmsign ceremony transcript (root)")
    assert not list(repo.glob("ceremony-transcript*"))  # not the default as well
    out = json.loads(cli("ceremony", "verify-transcript", str(records / "root.json"), str(repo),
                         "--json").stdout)
    assert out["threshold"] == 2 and len(out["signed_by"]) == 2

    three.add("dave")
    rotation = write_plan(tmp_path / "rotate.toml", ["alice", "bob", "dave"], 2)
    result = json.loads(cli("ceremony", "rotate-root", str(repo), "--plan", str(rotation),
                            "--allow-network", "--transcript", str(records / "rotate.json"),
                            "--json").stdout)
    assert result["root_version"] == 2 and result["transcript"] == str(records / "rotate.json")
    assert (records / "rotate.md").read_text().startswith("# hsmsign ceremony transcript (rotate-root)")
    assert not list(repo.glob("ceremony-*"))
    out = json.loads(cli("ceremony", "verify-transcript", str(records / "rotate.json"), str(repo),
                         "--json").stdout)
    assert out["threshold"] == 2 and len(out["signed_by"]) == 3
    cli("ceremony", "verify-transcript", str(records / "root.json"), str(repo))
    # An existing record is never overwritten by a later rotation; the repository is unchanged.
    before = tree_digest(repo)
    assert "already exists" in cli.fails("ceremony", "rotate-root", str(repo), "--plan", str(rotation),
                                         "--allow-network", "--transcript",
                                         str(records / "rotate.json")).error_lines[0]
    assert tree_digest(repo) == before


def test_rotate_root_refuses_a_repository_that_does_not_verify(three, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", ["alice", "bob"], 2)
    cli = Cli(tmp_path / "home", three.env(**pins("alice", "bob")))
    repo = tmp_path / "repo"
    cli("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network")
    (repo / "metadata" / "timestamp.json").write_text("{}")
    before = tree_digest(repo)
    error = cli.fails("ceremony", "rotate-root", str(repo), "--plan", str(plan),
                      "--allow-network").error_lines[0]
    assert "rotation stopped" in error and "timestamp" in error
    assert tree_digest(repo) == before
