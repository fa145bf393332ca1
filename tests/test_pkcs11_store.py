"""The PKCS#11 store against a real SoftHSM2 token, checked with an independent client."""

from __future__ import annotations

import json
import subprocess

import pytest
from securesystemslib.signer import Key

from conftest import Cli, clean_environ, passphrase_env, tree_digest
from hsmsign.config import TokenConfig
from hsmsign.keys import tuf_key
from hsmsign.keystore.pkcs11 import Pkcs11KeyStore, pin_refusal
from hsmsign.secrets import Secrets


def pkcs11_tool_objects(softhsm, *extra: str) -> str:
    proc = subprocess.run(
        ["pkcs11-tool", "--module", softhsm.module, "--token-label", softhsm.label,
         "--login", "--pin", "env:HSMSIGN_PIN", "-O", *extra],
        capture_output=True, text=True, env={**clean_environ(), "SOFTHSM2_CONF": str(softhsm.conf), "HSMSIGN_PIN": softhsm.pin},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def token_root(softhsm, tmp_path_factory) -> dict:
    """A root key generated on the token once per session (`--store auto`)."""
    home = tmp_path_factory.mktemp("token-root") / "home"
    cli = Cli(home, clean_environ(**softhsm.env(), **passphrase_env()))
    result = cli("key", "generate", "root", "--json")
    record = json.loads(result.stdout)
    record["stderr"] = result.stderr
    return record


def test_auto_puts_root_on_a_present_token_and_says_why(token_root, softhsm):
    assert token_root["store"] == "token"
    assert token_root["algorithm"] == "ecdsa-p256"
    assert softhsm.label in token_root["location"]
    assert "a PKCS#11 token is present" in token_root["stderr"]
    assert "SoftHSM keeps keys in files" in token_root["stderr"]


def test_auto_puts_root_in_a_file_without_a_token_and_says_why(file_cli):
    result = file_cli("key", "generate", "root", "--json")
    assert json.loads(result.stdout)["store"] == "file"
    assert "no hardware token is configured and present" in result.stderr


def test_token_private_key_is_sensitive_and_never_extractable(token_root, softhsm):
    listing = pkcs11_tool_objects(softhsm)
    blocks = [b for b in listing.split("Private Key Object")[1:] if "label:      root" in b]
    assert blocks, listing
    for block in blocks:
        access = next(l for l in block.splitlines() if "Access:" in l)
        assert "sensitive" in access and "never extractable" in access
        assert "always sensitive" in access


def test_list_shows_token_keys_without_a_pin(token_root, softhsm, home):
    cli = Cli(home, clean_environ(**softhsm.env(with_pin=False)))
    records = json.loads(cli("key", "list", "--json").stdout)
    mine = [r for r in records if r["keyid"] == token_root["keyid"]]
    assert mine and mine[0]["store"] == "token" and mine[0]["role"] == "root"


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-3072"])
def test_token_keys_of_every_algorithm_sign_verifiably(softhsm, algorithm):
    secrets = Secrets(environ={"HSMSIGN_PIN": softhsm.pin})
    store = Pkcs11KeyStore(TokenConfig(module=softhsm.module, label=softhsm.label), secrets)
    try:
        record = store.generate(f"test-{algorithm}", __import__("hsmsign.keys").keys.algorithm(algorithm))
        public: Key = tuf_key(store.public_key(record.keyid))
        assert public.keyid == record.keyid and record.algorithm == algorithm
        from securesystemslib.signer import Signature

        payload = b"signed on the token"
        sig = Signature(record.keyid, store.sign(record.keyid, payload).hex())
        public.verify_signature(sig, payload)
        from securesystemslib.exceptions import UnverifiedSignatureError

        with pytest.raises(UnverifiedSignatureError):
            public.verify_signature(sig, payload + b"!")
        store.remove(record.keyid)
        assert record.keyid not in store.keyids()
    finally:
        store.close()


def test_import_to_token_keeps_the_key_id_and_remove_destroys_everything(softhsm, home, keyed_home):
    cli = Cli(keyed_home, clean_environ(**softhsm.env(), **passphrase_env()))
    files = {r["role"]: r for r in json.loads(cli("key", "list", "--json").stdout)
             if r["store"] == "file"}
    source = files["targets"]["location"]
    out = json.loads(cli("key", "import", source, "--store", "token", "--json").stdout)
    assert out[0]["keyid"] == files["targets"]["keyid"] and out[0]["store"] == "token"
    both = [r for r in json.loads(cli("key", "list", "--json").stdout)
            if r["keyid"] == files["targets"]["keyid"]]
    assert {r["store"] for r in both} == {"file", "token"}
    listing = pkcs11_tool_objects(softhsm)
    imported = [b for b in listing.split("Private Key Object")[1:] if "label:      targets" in b]
    assert imported and all("never extractable" not in b or "sensitive" in b for b in imported)
    assert all("sensitive" in next(l for l in b.splitlines() if "Access:" in l) for b in imported)
    # Importing it again is an error and changes nothing.
    before = tree_digest(keyed_home)
    assert "already" in cli.fails("key", "import", source, "--store", "token").error_lines[0]
    assert tree_digest(keyed_home) == before
    # Removing destroys the private and the public object on the token (and the file).
    cli("key", "remove", files["targets"]["keyid"], "--force")
    after = pkcs11_tool_objects(softhsm)
    assert "label:      targets" not in after
    assert files["targets"]["keyid"] not in cli("key", "list").stdout


def test_token_list_json_shape(softhsm, home):
    cli = Cli(home, clean_environ(**softhsm.env()))
    tokens = json.loads(cli("token", "list", "--json").stdout)
    ours = [t for t in tokens if t["label"] == softhsm.label]
    assert len(ours) == 1
    assert set(ours[0]) == {"module", "slot", "label", "serial", "manufacturer", "model", "flags"}
    assert ours[0]["module"] == softhsm.module and "TOKEN_INITIALIZED" in ours[0]["flags"]


def test_wrong_pin_is_an_error_that_says_what_the_token_reports(softhsm, tmp_path):
    softhsm.add_token("wrong-pin")
    home = tmp_path / "home"
    cli = Cli(home, clean_environ(**{**softhsm.env(), **passphrase_env(),
                                     "HSMSIGN_TOKEN_LABEL": "wrong-pin", "HSMSIGN_PIN": "000000"}))
    first = cli.fails("key", "generate", "root", "--store", "token")
    assert "wrong PIN for token wrong-pin" in first.error_lines[0]
    assert "000000" not in first.stderr
    # SoftHSM raises CKF_USER_PIN_COUNT_LOW after a failure; the message passes it on.
    second = cli.fails("key", "generate", "root", "--store", "token")
    assert "few tries left" in second.error_lines[0]
    assert tree_digest(home) == {}


def test_pin_policy_refuses_the_final_try_and_a_locked_pin():
    from pkcs11 import TokenFlag

    assert pin_refusal(int(TokenFlag.USER_PIN_INITIALIZED), "t", force=False) is None
    final = int(TokenFlag.USER_PIN_FINAL_TRY | TokenFlag.USER_PIN_COUNT_LOW)
    assert "one PIN try left" in pin_refusal(final, "t", force=False)
    assert pin_refusal(final, "t", force=True) is None
    locked = int(TokenFlag.USER_PIN_LOCKED)
    assert "locked" in pin_refusal(locked, "t", force=True)


@pytest.mark.parametrize("module,expected", [
    ("/nonexistent/libnothing.so", "does not exist"),
    ("/etc/hostname", "is not a usable PKCS#11 module"),
    ("/usr/lib/x86_64-linux-gnu/libz.so.1", "is not a usable PKCS#11 module"),
])
def test_bad_module_is_a_clear_error(softhsm, home, module, expected):
    import os

    if not os.path.exists(module) and "nonexistent" not in module:
        pytest.skip(f"{module} is not on this machine")
    cli = Cli(home, clean_environ(**{**softhsm.env(), **passphrase_env(),
                                     "HSMSIGN_PKCS11_MODULE": module}))
    result = cli.fails("key", "generate", "root", "--store", "token")
    assert expected in result.error_lines[0]
    assert "HSMSIGN_PKCS11_MODULE" in result.error_lines[0]
    assert tree_digest(home) == {}


def test_no_token_with_that_label(softhsm, home):
    cli = Cli(home, clean_environ(**{**softhsm.env(), **passphrase_env(),
                                     "HSMSIGN_TOKEN_LABEL": "no-such-token"}))
    result = cli.fails("key", "generate", "root", "--store", "token")
    assert "no token with label 'no-such-token'" in result.error_lines[0]
    assert tree_digest(home) == {}
    listing = cli("key", "list")
    assert "warning: token keys not listed" in listing.stderr


def test_well_known_module_is_found_when_none_is_configured(softhsm, home):
    env = clean_environ(SOFTHSM2_CONF=str(softhsm.conf), HSMSIGN_TOKEN_LABEL=softhsm.label,
                        HSMSIGN_PIN=softhsm.pin, **passphrase_env())
    cli = Cli(home, env)
    record = json.loads(cli("key", "generate", "root", "--json").stdout)
    assert record["store"] == "token" and softhsm.label in record["location"]
    tokens = json.loads(cli("token", "list", "--json").stdout)
    assert any(t["label"] == softhsm.label and t["module"] == softhsm.module for t in tokens)
    cli("key", "remove", record["keyid"], "--force")


def test_token_chosen_by_serial_and_by_config_file(softhsm, home):
    tokens = json.loads(Cli(home, clean_environ(**softhsm.env()))("token", "list", "--json").stdout)
    serial = next(t["serial"] for t in tokens if t["label"] == softhsm.label)
    env = clean_environ(SOFTHSM2_CONF=str(softhsm.conf), HSMSIGN_TOKEN_SERIAL=serial,
                        HSMSIGN_PKCS11_MODULE=softhsm.module, HSMSIGN_PIN=softhsm.pin)
    record = json.loads(Cli(home, env)("key", "generate", "root", "--store", "token",
                                       "--json").stdout)
    assert serial in record["location"]
    # The same token named in <home>/config.toml instead of the environment.
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "config.toml").write_text(
        f'[pkcs11]\nmodule = "{softhsm.module}"\ntoken_label = "{softhsm.label}"\n')
    env = clean_environ(SOFTHSM2_CONF=str(softhsm.conf), HSMSIGN_PIN=softhsm.pin)
    listed = json.loads(Cli(home, env)("key", "list", "--json").stdout)
    assert record["keyid"] in {r["keyid"] for r in listed if r["store"] == "token"}
    Cli(home, env)("key", "remove", record["keyid"], "--force")
    (home / "config.toml").write_text("[pkcs11\nbroken")
    assert "config.toml is not valid TOML" in Cli(home, env).fails("key", "list").error_lines[0]
    # The module it names is loaded as code: a config (or home) others may write is refused.
    (home / "config.toml").write_text(f'[pkcs11]\nmodule = "{softhsm.module}"\n')
    for path in (home / "config.toml", home):
        mode = path.stat().st_mode & 0o777
        path.chmod(mode | 0o020)
        error = Cli(home, env).fails("key", "list").error_lines[0]
        assert f"{path} could be changed by another user" in error, error
        path.chmod(mode)
    Cli(home, env)("key", "list")


def test_auto_never_falls_back_to_a_file_when_the_named_token_is_missing(softhsm, home):
    env = clean_environ(**{**softhsm.env(), **passphrase_env(), "HSMSIGN_TOKEN_LABEL": "gone"})
    error = Cli(home, env).fails("key", "generate", "root").error_lines[0]
    assert "no token with label 'gone'" in error and "--store file" in error
    assert tree_digest(home) == {}


def test_auto_with_several_tokens_and_none_chosen_is_an_error(softhsm, home):
    softhsm.add_token("second-token")
    env = clean_environ(SOFTHSM2_CONF=str(softhsm.conf), HSMSIGN_PIN=softhsm.pin, **passphrase_env())
    error = Cli(home, env).fails("key", "generate", "root").error_lines[0]
    assert "several tokens present" in error and "HSMSIGN_TOKEN_LABEL" in error
    assert tree_digest(home) == {}


def test_token_keys_are_for_signing_only(token_root, softhsm):
    listing = pkcs11_tool_objects(softhsm)
    for block in listing.split("Private Key Object")[1:]:
        if "label:      root" in block:
            usage = next(l for l in block.splitlines() if "Usage:" in l)
            assert "sign" in usage
            assert not any(u in usage for u in ("decrypt", "unwrap", "derive"))


def test_token_list_says_when_yubikeys_cannot_be_listed(softhsm, home, tmp_path):
    env = clean_environ(**softhsm.env(), PCSCLITE_CSOCK_NAME=str(tmp_path / "no-pcscd.sock"))
    out = Cli(home, env)("token", "list")
    assert "warning: YubiKeys not listed: cannot reach pcscd" in out.stderr
    assert softhsm.label in out.stdout  # the PKCS#11 tokens are listed all the same
