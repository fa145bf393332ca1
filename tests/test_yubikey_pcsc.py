"""An emulated YubiKey behind real pcscd (vsmartcard's vpcd driver), driven by the real tools:
the `hsmsign` CLI through both routes (PIV through yubikey-manager, PKCS#11 through ykcs11),
`ykman`, `yubico-piv-tool`, `pkcs11-tool` with Yubico's ykcs11, and `openssl` to check a
signature. Secrets go through the environment (or a pty), never argv.

These tests need pcscd and vpcd (installed by scripts/setup) and either root or a private mount
namespace; where pcscd cannot start they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import Cli, tree_digest
from piv_emulator import PIN_ONCE, TOUCH_ALWAYS, AttestationCA, PivCard

YKCS11 = next((m for m in ("/usr/lib/x86_64-linux-gnu/libykcs11.so",
                           "/usr/lib/aarch64-linux-gnu/libykcs11.so") if os.path.exists(m)), None)
YKMAN = shutil.which("ykman") or str(Path(sys.executable).parent / "ykman")
PIN = "123456"
SERIAL = 12345678


TOOLS = {"ykman": YKMAN, "yubico-piv-tool": shutil.which("yubico-piv-tool"),
         "pkcs11-tool": shutil.which("pkcs11-tool"), "ykcs11": YKCS11, "openssl": shutil.which("openssl")}


@pytest.fixture(scope="module")
def pcsc(pcscd):
    missing = [name for name, path in TOOLS.items() if not path or not os.path.exists(path)]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)}; run `bash scripts/setup`")
    pcscd.insert(PivCard(), 0)
    return pcscd


@pytest.fixture(scope="module")
def ca():
    return AttestationCA.create()


@pytest.fixture
def card(pcsc, ca):
    """A factory-fresh YubiKey 5 in reader 0."""
    card = PivCard(ca=ca, serial=SERIAL)
    if 0 not in pcsc.cards:
        pcsc.insert(card, 0)
    pcsc.swap(card, 0)
    return card


@pytest.fixture
def env(pcsc, no_token_env):
    """No PKCS#11 module configured: hsmsign finds ykcs11 by itself, as on a user's machine."""
    return {**no_token_env, **pcsc.env(), "HSMSIGN_PIN": PIN}


@pytest.fixture
def yk(keyed_home, env):
    return Cli(keyed_home, env)


def run(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, **kw)
    assert proc.returncode == 0, f"{args[0]} failed: {proc.stdout}\n{proc.stderr}"
    return proc


def online_keys(yk: Cli) -> list[str]:
    keys = {r["role"]: r["keyid"] for r in json.loads(yk("key", "list", "--json").stdout)
            if r["store"] == "file"}
    return ["--targets-key", keys["targets"], "--snapshot-key", keys["snapshot"],
            "--timestamp-key", keys["timestamp"]]


def generate_root(yk: Cli, *args: str) -> dict:
    out = yk("key", "generate", "root", "--store", "yubikey", *args, "--json")
    return json.loads(out.stdout) | {"stderr": out.stderr}


def test_piv_route_key_seen_by_ykman_yubico_piv_tool_ykcs11_and_openssl(yk, card, pcsc, env, tmp_path):
    record = generate_root(yk, "--touch", "always", "--pin-policy", "once")
    keyid = record["keyid"]
    assert (record["store"], record["location"]) == ("yubikey", f"YubiKey {SERIAL} slot 9c")
    assert f"Touch your YubiKey (serial {SERIAL}) now" in record["stderr"]
    assert "factory default PIN, PUK and management key" in record["stderr"]
    slot = card.keys[0x9C]
    assert slot.generated and (slot.pin_policy, slot.touch_policy) == (PIN_ONCE, TOUCH_ALWAYS)

    # Both routes list it under the same TUF key ID: PIV (yubikey) and ykcs11 (token).
    listed = json.loads(yk("key", "list", "--json").stdout)
    assert {r["store"] for r in listed if r["keyid"] == keyid} == {"yubikey", "token"}

    reader = pcsc.reader(0)
    info = run([YKMAN, "--reader", reader, "piv", "info"], env).stdout
    assert f"CN=hsmsign root {keyid[:16]}" in info and "ECCP256" in info
    status = run(["yubico-piv-tool", "-r", reader, "-a", "status"], env).stdout
    assert f"Serial Number:\t{SERIAL}" in status
    assert f"Subject DN:\tCN=hsmsign root {keyid[:16]}" in status

    # ykcs11 signs with the slot's key (PIN from the environment, not argv); openssl verifies
    # it against the public key hsmsign exports.
    data, sig, pub = tmp_path / "data", tmp_path / "sig", tmp_path / "root.pem"
    data.write_bytes(b"signed through ykcs11")
    touches = card.touches
    run(["pkcs11-tool", "--module", YKCS11, "--slot-index", "0", "--pin", "env:HSMSIGN_PIN",
         "--sign", "--mechanism", "ECDSA-SHA256", "--id", "02", "--input-file", str(data),
         "--output-file", str(sig), "--signature-format", "openssl"], env)
    assert card.touches == touches + 1  # the touch policy holds on this route too
    yk("key", "export", keyid, "--output", str(pub))
    verified = run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig),
                    str(data)], env)
    assert "Verified OK" in verified.stdout

    table = yk("token", "list").stdout
    row = next(line for line in table.splitlines() if line.startswith(str(SERIAL)))
    for value in ("5.4.3", "3/3", "9c", "ECCP256", keyid, "root", "once", "always"):
        assert value in row
    entry = next(t for t in json.loads(yk("token", "list", "--json").stdout)
                 if t.get("kind") == "yubikey")
    assert entry["serial"] == SERIAL and entry["slots"][0]["keyid"] == keyid


def test_repo_init_signs_root_on_the_yubikey_pin_and_touch_on_a_terminal(yk, card, pcsc, keyed_home,
                                                                          env, tmp_path):
    keyid = generate_root(yk, "--touch", "always")["keyid"]
    online = online_keys(yk)
    repo = tmp_path / "repo"
    touches = card.touches
    # On a terminal, without HSMSIGN_PIN: the PIN is asked once, the touch announced.
    child = pexpect.spawn(sys.executable, ["-m", "hsmsign", "--home", str(keyed_home), "repo",
                                           "init", str(repo), "--root-key", keyid, *online],
                          env={k: v for k, v in env.items() if k != "HSMSIGN_PIN"},
                          encoding="utf-8", timeout=60)
    child.expect(f"Enter PIN for token YubiKey {SERIAL}: ")
    child.sendline(PIN)
    child.expect(f"Touch your YubiKey \\(serial {SERIAL}\\) now")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert card.touches == touches + 1
    root = json.loads((repo / "metadata" / "1.root.json").read_text())
    assert list(root["signed"]["roles"]["root"]["keyids"]) == [keyid]
    assert [s["keyid"] for s in root["signatures"]] == [keyid]
    yk("repo", "verify", str(repo))
    # The YubiKey back in its safe: a refresh that needs root says which one to plug in.
    pcsc.pull(0)
    out = yk("repo", "refresh", str(repo), "--within", "400")
    assert "skipped root:" in out.stderr
    assert f"(key {keyid[:7]} is on YubiKey {SERIAL}: plug it in)" in out.stderr


def test_pkcs11_route_signs_through_ykcs11(yk, card, env, tmp_path):
    keyid = generate_root(yk, "--touch", "never")["keyid"]
    token_env = {**env, "HSMSIGN_PKCS11_MODULE": YKCS11, "HSMSIGN_TOKEN_LABEL": f"YubiKey PIV #{SERIAL}"}
    tokens = json.loads(Cli(yk.home, token_env)("token", "list", "--json").stdout)
    assert any(t.get("label") == f"YubiKey PIV #{SERIAL}" and t.get("module") == YKCS11 for t in tokens)
    # hsmsign's PKCS#11 store and signer, on ykcs11, in a process of their own.
    script = f"""
import sys
from pathlib import Path
from hsmsign.config import load_token_config
from hsmsign.keys import tuf_key
from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
from hsmsign.secrets import Secrets
from hsmsign.signing import TokenSigner
store = Pkcs11KeyStore(load_token_config(Path({str(yk.home)!r})), Secrets())
assert {keyid!r} in store.keyids(), store.keyids()
signature = TokenSigner(store, {keyid!r}).sign(b"payload")
tuf_key(store.public_key({keyid!r})).verify_signature(signature, b"payload")
store.close()
print("signed", signature.keyid)
"""
    out = run([sys.executable, "-c", script], token_env)
    assert out.stdout.strip() == f"signed {keyid}"


def test_bad_input_one_error_line_and_nothing_half_signed(yk, card, pcsc, ca, keyed_home, env, tmp_path):
    keyid = generate_root(yk, "--touch", "always")["keyid"]
    online = online_keys(yk)
    repo = tmp_path / "repo"
    home_before = tree_digest(keyed_home)

    def init_fails(**extra) -> str:
        result = yk.fails("repo", "init", str(repo), "--root-key", keyid, *online, env=extra)
        assert not repo.exists() and tree_digest(keyed_home) == home_before
        return result.error_lines[0]

    # Wrong PIN: how many tries remain; at one left, nothing is tried without --force.
    assert f"wrong PIN for YubiKey {SERIAL}; 2 tries left" in init_fails(HSMSIGN_PIN="654321")
    card.pin.remaining = 1
    assert "one PIN try left" in init_fails()
    assert card.pin.remaining == 1
    card.pin.remaining = 3
    # Nobody touches it.
    card.touch_mode = "never"
    assert "was not touched in time; nothing was signed" in init_fails()
    card.touch_mode = "auto"
    # The card is pulled out in the middle of the signature.
    card.pull_when(lambda apdu: apdu[1] == 0x87 and apdu[3] == 0x9C)
    assert "stopped answering" in init_fails()
    card.pull_when(None)
    pcsc.insert(card, 0)
    yk("repo", "init", str(repo), "--root-key", keyid, *online)  # and now it works

    # The slot is taken; a wrong management key; two YubiKeys and no --serial.
    assert "already holds key" in yk.fails("key", "generate", "root", "--store", "yubikey").error_lines[0]
    card.mgmt_key = bytes(range(24))
    error = yk.fails("key", "generate", "root", "--store", "yubikey", "--slot", "9a",
                     env={"HSMSIGN_MANAGEMENT_KEY": "ab" * 24}).error_lines[0]
    assert f"wrong management key for YubiKey {SERIAL}" in error
    second = PivCard(ca=ca, serial=2222222, version=(4, 3, 5))
    pcsc.insert(second, 1)
    try:
        error = yk.fails("key", "generate", "targets", "--store", "yubikey", "--slot", "9a").error_lines[0]
        assert "several YubiKeys are plugged in" in error and "--serial" in error
        record = json.loads(yk("key", "generate", "targets", "--store", "yubikey", "--slot", "9a",
                               "--serial", "2222222", "--json").stdout)
        assert record["location"] == "YubiKey 2222222 slot 9a" and 0x9A in second.keys
        only = json.loads(yk("token", "list", "--serial", "2222222", "--json").stdout)
        assert {str(t["serial"]) for t in only} == {"2222222"}  # ykcs11's token and the YubiKey
        assert [t["firmware"] for t in only if t.get("kind") == "yubikey"] == ["4.3.5"]
    finally:
        pcsc.pull(1)


def test_import_from_file_keeps_the_encrypted_file_as_backup(yk, card, keyed_home):
    file_key = json.loads(yk("key", "generate", "root", "--store", "file", "--json").stdout)
    key_file = keyed_home / "private" / f"{file_key['keyid']}.key"
    backup = key_file.read_bytes()
    out = yk("key", "generate", "root", "--store", "yubikey", "--import-from-file",
             file_key["keyid"][:12], "--touch", "never", "--json")
    record = json.loads(out.stdout)
    assert record["keyid"] == file_key["keyid"] and record["store"] == "yubikey"
    assert "stays as the encrypted backup" in out.stderr
    assert f"\nImported ecdsa-p256 root key {file_key['keyid']}\n" in out.stderr
    assert not card.keys[0x9C].generated and key_file.read_bytes() == backup
    listed = {r["store"] for r in json.loads(yk("key", "list", "--json").stdout)
              if r["keyid"] == record["keyid"]}
    assert {"file", "yubikey"} <= listed
    # Not a file key, or a key of another role: refused, nothing written.
    targets = next(r for r in json.loads(yk("key", "list", "--json").stdout) if r["role"] == "targets")
    error = yk.fails("key", "generate", "root", "--store", "yubikey", "--slot", "9a",
                     "--import-from-file", targets["keyid"]).error_lines[0]
    assert "is a targets key, not a root key" in error and 0x9A not in card.keys
    error = yk.fails("key", "attest", record["keyid"]).error_lines[0]
    assert "imported, not generated on the device" in error


def test_key_attest_reads_the_device_and_binds_the_key_id(yk, card, ca, tmp_path):
    keyid = generate_root(yk, "--touch", "cached", "--pin-policy", "always")["keyid"]
    roots = tmp_path / "ca.pem"
    roots.write_bytes(ca.pem())
    out = json.loads(yk("key", "attest", keyid, "--trust-roots", str(roots), "--json").stdout)
    assert (out["keyid"], out["serial"], out["firmware"]) == (keyid, SERIAL, "5.4.3")
    assert (out["pin_policy"], out["touch_policy"]) == ("always", "cached")
    assert out["chain"] == ["CN=Yubico PIV Attestation", "CN=Test PIV Root CA"]
    # Only Yubico's roots are trusted unless told otherwise: the test CA is not one of them.
    assert "does not chain" in yk.fails("key", "attest", keyid).error_lines[0]


def test_token_setup_then_reset_with_typed_confirmation(yk, card, pcsc, env, keyed_home):
    setup_env = {"HSMSIGN_PUK": "12345678", "HSMSIGN_NEW_PIN": "24681357",
                 "HSMSIGN_NEW_PUK": "97531864"}
    out = yk("token", "setup", env=setup_env)
    assert "PIN changed" in out.stderr and "protected by the PIN" in out.stderr
    info = run([YKMAN, "--reader", pcsc.reader(0), "piv", "info"], env).stdout
    assert "Management key is stored on the YubiKey, protected by PIN." in info
    assert "WARNING" not in info
    assert "factory default" not in yk("token", "list", env={"HSMSIGN_PIN": "24681357"}).stderr

    # Reset: only with the serial typed at a terminal, after saying which keys it erases.
    keyid = json.loads(yk("key", "generate", "root", "--store", "yubikey", "--touch", "never",
                          "--json", env={"HSMSIGN_PIN": "24681357"}).stdout)["keyid"]
    assert "typed at a terminal" in yk.fails("token", "reset").error_lines[0]
    reset = [sys.executable, "-m", "hsmsign", "--home", str(keyed_home), "token", "reset"]
    child = pexpect.spawn(reset[0], reset[1:], env=env, encoding="utf-8", timeout=60)
    child.expect(f"slot key {keyid} \\(root, YubiKey {SERIAL} slot 9c\\)")
    child.expect("1 key\\(s\\), listed above")
    child.expect("Type its serial number to confirm")
    child.sendline("1234")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and "does not match; nothing was changed" in child.before
    assert card.pin.value == b"24681357"
    child = pexpect.spawn(reset[0], reset[1:], env=env, encoding="utf-8", timeout=60)
    child.expect("Type its serial number to confirm")
    child.sendline(str(SERIAL))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    info = run([YKMAN, "--reader", pcsc.reader(0), "piv", "info"], env).stdout
    assert "WARNING: Using default PIN!" in info
