"""The root ceremony with YubiKeys: two emulated YubiKeys behind the real pcscd (the PIV route,
through yubikey-manager) and a SoftHSM token, threshold 2, from a plan. Factory defaults are
refused before anything is made; the keys are generated on the devices with the plan's
policies and attested; the result is checked by python-tuf's client, the transcript checker and
`key attest` on the attestation files the ceremony wrote."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from piv_emulator import PIN_ONCE, TOUCH_ALWAYS, AttestationCA, PivCard
from test_ceremony import PIN, Tokens
from test_repository import Server, updater

from conftest import Cli, tree_digest
from hsmsign.keys import key_id

FACTORY_PIN, FACTORY_PUK = "123456", "12345678"
NEW_PIN, NEW_PUK = "80246135", "97531864"
SERIALS = (20000001, 20000002)


@pytest.fixture
def room(pcscd, tmp_path):
    """Two factory-fresh YubiKeys (readers 0 and 1) and carol's SoftHSM token: the CLI, the
    cards, the plan and the test attestation CA."""
    ca = AttestationCA.create()
    cards = [PivCard(ca=ca, serial=serial) for serial in SERIALS]
    for reader, card in enumerate(cards):
        pcscd.insert(card, reader)
    tokens = Tokens(tmp_path / "hsm")
    tokens.add("carol")
    (tmp_path / "test-ca.pem").write_bytes(ca.pem())
    (tmp_path / "usb").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""threshold = 2
[expires]
root = 365
[[custodian]]
name = "alice"
token = "yubikey:{SERIALS[0]}"
pin_env = "ALICE_PIN"
[[custodian]]
name = "bob"
token = "yubikey:{SERIALS[1]}"
pin_env = "BOB_PIN"
[[custodian]]
name = "carol"
token = "pkcs11:token=carol"
pin_env = "CAROL_PIN"
[yubikey]
touch = "always"
pin_policy = "once"
attestation_roots = "{tmp_path / 'test-ca.pem'}"
[online_keys]
store = "file"
[backup]
destinations = ["{tmp_path / 'usb'}"]
[confirm]
all = true
""")
    env = tokens.env(**pcscd.env(), ALICE_PIN=NEW_PIN, BOB_PIN=NEW_PIN, CAROL_PIN=PIN,
                     HSMSIGN_BACKUP_PASSPHRASE="backup passphrase for usb")
    yield Cli(tmp_path / "home", env), cards, plan, ca
    for reader in (0, 1):
        pcscd.pull(reader)


def ceremony(cli: Cli, repo: Path, plan: Path, **env: str):
    return cli("ceremony", "root", str(repo), "--plan", str(plan), "--allow-network", "--json",
               env=env, ok=False)


def test_yubikey_ceremony_refuses_defaults_then_generates_attests_and_verifies(room, pcscd, tmp_path):
    cli, cards, plan, ca = room
    repo = tmp_path / "repo"

    # Factory-fresh YubiKeys: refused before any key is made, and nothing is written.
    out = ceremony(cli, repo, plan, ALICE_PIN=FACTORY_PIN, BOB_PIN=FACTORY_PIN)
    assert out.returncode == 1, out.stderr
    assert "factory default PIN, PUK, management key" in out.error_lines[0]
    assert f"hsmsign token setup --serial {SERIALS[0]}" in out.error_lines[0]
    assert not repo.exists() and tree_digest(cli.home) == {}
    assert all(not card.keys for card in cards)

    for serial in SERIALS:
        cli("token", "setup", "--serial", str(serial),
            env={"HSMSIGN_PIN": FACTORY_PIN, "HSMSIGN_PUK": FACTORY_PUK,
                 "HSMSIGN_NEW_PIN": NEW_PIN, "HSMSIGN_NEW_PUK": NEW_PUK})

    # A wrong PIN from the plan's variable: one clear error, one try spent, nothing made.
    out = ceremony(cli, repo, plan, ALICE_PIN="11112222")
    assert out.returncode == 1 and len(out.error_lines) == 1, out.stderr
    assert f"wrong PIN for YubiKey {SERIALS[0]}; 2 tries left" in out.error_lines[0]
    assert not repo.exists() and all(not card.keys for card in cards)
    assert cards[0].pin.remaining == 2

    out = ceremony(cli, repo, plan)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert f"Touch your YubiKey (serial {SERIALS[0]}) now" in out.stderr
    assert cards[0].pin.remaining == 3  # the right PIN resets the counter

    # Each YubiKey generated its key in slot 9c with the plan's policies; the key IDs in
    # root are those of the slots' public keys.
    on_cards = []
    for card in cards:
        slot = card.keys[0x9C]
        assert slot.generated and (slot.pin_policy, slot.touch_policy) == (PIN_ONCE, TOUCH_ALWAYS)
        on_cards.append(key_id(slot.private.public_key()))
    root = json.loads((repo / "metadata" / "1.root.json").read_text())["signed"]
    assert root["roles"]["root"]["threshold"] == 2
    assert set(on_cards) <= set(root["roles"]["root"]["keyids"]) == set(result["root_keys"])

    # The attestations are in the repository and recorded in the transcript; `key attest`
    # binds each to the root key in the metadata.
    transcript = json.loads((repo / "ceremony-transcript.json").read_text())
    preflight = transcript["entries"][0]["data"]
    assert {f"yubikey:{SERIALS[0]}", f"yubikey:{SERIALS[1]}",
            "pkcs11:token=carol"} <= set(preflight["tokens_present"])
    attested = {e["data"]["keyid"]: e["data"]["attestation"] for e in transcript["entries"]
                if e["step"] == "root key" and "attestation" in e["data"]}
    assert set(attested) == set(on_cards)
    assert {a["serial"] for a in attested.values()} == set(SERIALS)
    for keyid in on_cards:
        pem = repo / "attestations" / f"{keyid}.pem"
        shown = json.loads(cli("key", "attest", keyid, "--certificate", str(pem), "--repo",
                               str(repo), "--trust-roots", str(tmp_path / "test-ca.pem"),
                               "--json").stdout)
        assert shown["keyid"] == keyid and shown["touch_policy"] == attested[keyid]["touch_policy"]
    cli("ceremony", "verify-transcript", str(repo / "ceremony-transcript.json"), str(repo))
    # An attestation swapped afterwards is caught by the transcript check.
    mine = repo / "attestations" / f"{on_cards[0]}.pem"
    kept = mine.read_bytes()
    mine.write_bytes((repo / "attestations" / f"{on_cards[1]}.pem").read_bytes())
    out = cli.fails("ceremony", "verify-transcript", str(repo / "ceremony-transcript.json"), str(repo))
    assert f"attestations/{on_cards[0]}.pem is not the attestation" in out.error_lines[0]
    mine.write_bytes(kept)

    # A client trusts it (root signed by all three), and the online keys work.
    server = Server(repo)
    try:
        updater(repo, server, tmp_path / "client").refresh()  # this client trusts root v1
    finally:
        server.close()
    cli("target", "add", str(repo), "hello", "--length", "1", "--sha256", "a" * 64)
    cli("repo", "verify", str(repo))

    # Bob's YubiKey is lost; Dave brings a new one (set up first). Alice and Carol keep their
    # keys and sign as old and new keys; Dave's key is generated on his YubiKey and attested.
    dave = PivCard(ca=ca, serial=20000003)
    pcscd.swap(dave, 1)
    cli("token", "setup", "--serial", "20000003",
        env={"HSMSIGN_PIN": FACTORY_PIN, "HSMSIGN_PUK": FACTORY_PUK,
             "HSMSIGN_NEW_PIN": NEW_PIN, "HSMSIGN_NEW_PUK": NEW_PUK})
    rotation = tmp_path / "rotate.toml"
    rotation.write_text(plan.read_text().replace(f'name = "bob"\ntoken = "yubikey:{SERIALS[1]}"\n'
                                                 'pin_env = "BOB_PIN"',
                                                 'name = "dave"\ntoken = "yubikey:20000003"\n'
                                                 'pin_env = "DAVE_PIN"'))
    out = cli("ceremony", "rotate-root", str(repo), "--plan", str(rotation), "--allow-network",
              "--json", env={"DAVE_PIN": NEW_PIN})
    rotated = json.loads(out.stdout)
    dave_key = key_id(dave.keys[0x9C].private.public_key())
    assert dave.keys[0x9C].generated and rotated["root_version"] == 2
    assert set(rotated["root_keys"]) == {on_cards[0], dave_key, *(set(result["root_keys"]) - set(on_cards))}
    assert (repo / "attestations" / f"{dave_key}.pem").exists()
    cli("ceremony", "verify-transcript", rotated["transcript"], str(repo))
    server = Server(repo)
    try:
        updater(repo, server, tmp_path / "client").refresh()  # it trusted root v1
    finally:
        server.close()
    client_root = json.loads((tmp_path / "client" / "metadata" / "root.json").read_text())
    assert client_root["signed"]["version"] == 2



def test_interactive_ceremony_sets_up_a_factory_fresh_yubikey_after_a_wrong_pin(room, tmp_path):
    """On a terminal: a wrong PIN is asked again, factory defaults are offered `token setup` on
    the spot, and the new PIN is what the rest of the ceremony uses (not asked again)."""
    import pexpect

    cli, cards, _, _ = room
    plan = tmp_path / "interactive.toml"
    plan.write_text(f"""threshold = 1
[[custodian]]
name = "alice"
token = "yubikey:{SERIALS[0]}"
[yubikey]
touch = "cached"
attestation_roots = "{tmp_path / 'test-ca.pem'}"
""")
    env = {k: v for k, v in cli.env.items() if not k.endswith("_PIN")}
    child = pexpect.spawn(sys.executable, ["-m", "hsmsign", "--home", str(cli.home), "ceremony", "root",
                                       str(tmp_path / "repo"), "--plan", str(plan),
                                       "--allow-network"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.logfile_read = seen = io.StringIO()
    child.expect(r"correct\? \[y/N\]")
    child.sendline("y")
    child.expect("Insert token 1 of 1, held by alice")
    child.sendline("")
    child.expect(f"Enter PIN for token YubiKey {SERIALS[0]}: ")
    child.sendline("99999999")
    child.expect("Wrong PIN")
    child.expect(f"Enter PIN for token YubiKey {SERIALS[0]}: ")
    child.sendline(FACTORY_PIN)
    child.expect("factory defaults")
    child.expect(rf"Set up YubiKey {SERIALS[0]} of alice now\? \[y/N\]")
    child.sendline("y")
    for prompt, value in (("Enter a new PIN", NEW_PIN), ("Repeat the new PIN", NEW_PIN),
                          ("Enter a new PUK", NEW_PUK), ("Repeat the new PUK", NEW_PUK),
                          ("Enter the current PUK", FACTORY_PUK)):
        child.expect(prompt)
        child.sendline(value)
    child.expect(rf"Touch your YubiKey \(serial {SERIALS[0]}\) now")
    child.expect(r"written down key ID .*\? \[y/N\]")
    child.sendline("y")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 0, child.before
    # The new PIN was kept for signing root, not asked again; no secret was echoed.
    assert seen.getvalue().count("Enter PIN") == 2
    assert NEW_PIN not in seen.getvalue() and NEW_PUK not in seen.getvalue()
    card = cards[0]
    assert not card.pin.is_default and not card.puk.is_default and card.keys[0x9C].generated
    transcript = json.loads((tmp_path / "repo" / "ceremony-transcript.json").read_text())
    setup = next(e["data"] for e in transcript["entries"] if e["step"] == "token setup")
    assert setup["serial"] == SERIALS[0] and "PIN" in setup["replaced"]
    cli("repo", "verify", str(tmp_path / "repo"))
