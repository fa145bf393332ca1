"""The declared key-store interface (keystore/base.py), its registry, and the typed errors
callers branch on: every registered store has the whole interface with the same signatures,
store kinds print and serialise as before, and wrong PINs carry what the device says."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest
from conftest import PASSPHRASE, clean_environ

from hsmsign.config import NO_TOKEN, TokenConfig
from hsmsign.errors import (
    HsmsignError,
    KeyNotFound,
    NotFound,
    PinLocked,
    SeveralTokens,
    TokenAbsent,
    TokenError,
    WrongPassphrase,
    WrongPin,
)
from hsmsign.keys import ALGORITHMS, generate_private_key
from hsmsign.keystore.base import KeyStore, StoreKind
from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
from hsmsign.keystore.stores import STORE_CHOICES, STORE_FOR_KIND, KeyStores
from hsmsign.secrets import Secrets

sys.path.insert(0, str(Path(__file__).parent))
from piv_emulator import EmulatedDevice, PivCard  # noqa: E402

P256 = ALGORITHMS["ecdsa-p256"]
INTERFACE = sorted(name for name, member in vars(KeyStore).items()
                   if getattr(member, "__isabstractmethod__", False))


def _shape(function) -> list[tuple]:
    """A signature without annotations: names, kinds and defaults of the parameters."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_interface_is_the_one_the_issue_asks_for():
    assert {"keyids", "list_keys", "record", "public_key", "generate", "import_key", "remove",
            "signer", "close", "is_present", "require_present", "for_home"} <= set(INTERFACE)


@pytest.mark.parametrize("kind", list(STORE_FOR_KIND))
def test_every_registered_store_implements_the_whole_interface_with_the_same_signatures(kind):
    cls = STORE_FOR_KIND[kind]
    assert issubclass(cls, KeyStore) and not inspect.isabstract(cls)
    assert cls.kind is kind
    for name in INTERFACE:
        ours = inspect.getattr_static(cls, name)
        assert not getattr(ours, "__isabstractmethod__", False), f"{cls.__name__}.{name}"
        assert _shape(getattr(cls, name)) == _shape(getattr(KeyStore, name)), \
            f"{cls.__name__}.{name} has another signature than KeyStore.{name}"


def test_the_registry_order_is_the_store_preference_and_the_cli_choices():
    assert list(STORE_FOR_KIND) == [StoreKind.YUBIKEY, StoreKind.TOKEN, StoreKind.KMS,
                                   StoreKind.FILE]
    assert STORE_CHOICES == ("auto", "file", "token", "yubikey", "kms")


def test_store_kinds_print_compare_and_serialise_as_their_old_strings():
    assert StoreKind.FILE == "file" and StoreKind("token") is StoreKind.TOKEN
    assert f"{StoreKind.YUBIKEY}" == "yubikey" and str(StoreKind.FILE) == "file"
    assert json.dumps({"store": StoreKind.TOKEN}) == '{"store": "token"}'


def test_a_file_key_through_the_interface(tmp_path):
    env = {"HSMSIGN_TARGETS_PASSPHRASE": PASSPHRASE}
    stores = KeyStores(tmp_path / "home", Secrets(environ=env), NO_TOKEN, kdf_iterations=1000)
    files = stores.store(StoreKind.FILE)
    record = files.generate("targets", P256, gun="example.com/app")
    assert (record.store, record.gun) == (StoreKind.FILE, "example.com/app")
    imported = files.import_key(generate_private_key(P256), "targets")
    assert set(files.keyids()) == {record.keyid, imported.keyid}
    # The signer the store gives signs for the key's public key.
    signer = files.signer(record.keyid)
    assert signer.public_key.keyid == record.keyid
    files.remove(imported.keyid)
    with pytest.raises(KeyNotFound):
        files.record(imported.keyid)
    with pytest.raises(NotFound):  # the older name still catches it
        stores.locate(imported.keyid)
    # Only the usable stores count, in preference order: records (KMS) and files always are.
    assert [s.kind for s in stores.usable_stores()] == [StoreKind.KMS, StoreKind.FILE]


def test_a_wrong_pin_on_a_real_softhsm_token_is_a_typed_error(softhsm):
    softhsm.add_token("typed-wrong-pin")
    config = TokenConfig(module=softhsm.module, label="typed-wrong-pin", explicit=True)
    store = Pkcs11KeyStore(config, Secrets(environ={"HSMSIGN_PIN": "000000"}))
    store.rescan()  # SoftHSM sees a token made after it was loaded only when reinitialised
    with pytest.raises(WrongPin) as wrong:
        store.login()
    assert str(wrong.value).startswith("wrong PIN for token typed-wrong-pin; ")
    assert "000000" not in str(wrong.value)
    # SoftHSM reports no counter (only CKF_USER_PIN_COUNT_LOW, and never locks): unknown,
    # not guessed.
    assert wrong.value.attempts_remaining is None
    store.close()


def test_a_wrong_yubikey_pin_carries_the_tries_the_card_reports(tmp_path):
    card = PivCard()
    stores = KeyStores(tmp_path / "home", Secrets(environ={"HSMSIGN_PIN": "654321"}),
                       TokenConfig(module="/nonexistent/pkcs11.so"),
                       yubikey_devices=lambda: [EmulatedDevice(card)])
    for remaining in (2, 1):
        with pytest.raises(WrongPin) as wrong:
            stores.yubikey.check_pin()
        assert wrong.value.attempts_remaining == remaining == card.pin.remaining
        stores.secrets.forget_pin("YubiKey 12345678")
    card.pin.remaining = 0
    with pytest.raises(PinLocked):
        stores.yubikey.check_pin()


def test_several_tokens_and_an_absent_token_are_typed(softhsm):
    softhsm.add_token("typed-twin")
    softhsm.add_token("typed-twin")
    twins = Pkcs11KeyStore(TokenConfig(module=softhsm.module, label="typed-twin", explicit=True),
                           Secrets(environ={}))
    twins.rescan()
    with pytest.raises(SeveralTokens, match="several tokens present"):
        twins.require_present()
    absent = Pkcs11KeyStore(TokenConfig(module=softhsm.module, label="no-such", explicit=True),
                            Secrets(environ={}))
    with pytest.raises(TokenAbsent, match="no token with label 'no-such'"):
        absent.require_present()
    # `auto` names the choice instead of guessing, and keeps the type.
    stores = KeyStores(Path("/nonexistent-home"), Secrets(environ={}),
                       TokenConfig(module=softhsm.module, label="typed-twin", explicit=True))
    with pytest.raises(SeveralTokens, match="or pass --store file to keep the root key"):
        stores.choose_store("root", "auto")
    assert issubclass(SeveralTokens, TokenError) and issubclass(TokenError, HsmsignError)


def test_a_wrong_passphrase_from_the_environment_is_typed(tmp_path):
    env = {"HSMSIGN_ROOT_PASSPHRASE": PASSPHRASE}
    stores = KeyStores(tmp_path / "home", Secrets(environ=env), NO_TOKEN, kdf_iterations=1000)
    record = stores.files.generate("root", P256)
    again = KeyStores(tmp_path / "home", Secrets(environ={"HSMSIGN_ROOT_PASSPHRASE": "nope"}),
                      NO_TOKEN)
    with pytest.raises(WrongPassphrase, match="check HSMSIGN_ROOT_PASSPHRASE"):
        again.files.private_key(record.keyid)


def test_a_secrets_handler_is_asked_for_a_pin_by_the_prompt_kind_not_its_text(softhsm, tmp_path,
                                                                              monkeypatch):
    """`hsmsign:` URIs ask a securesystemslib secrets handler for "pin" at a PIN prompt."""
    from securesystemslib.signer import Signer

    from hsmsign.keys import tuf_key
    from hsmsign.signing import HsmsignSigner  # noqa: F401 - registers hsmsign:

    env = clean_environ(**softhsm.env(with_pin=False))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HSMSIGN_HOME", str(tmp_path / "home"))
    softhsm.add_token("typed-handler")
    monkeypatch.setenv("HSMSIGN_TOKEN_LABEL", "typed-handler")
    config = TokenConfig(module=softhsm.module, label="typed-handler", explicit=True)
    store = Pkcs11KeyStore(config, Secrets(environ={"HSMSIGN_PIN": softhsm.pin}))
    store.rescan()
    record = store.generate("targets", P256)
    public = tuf_key(store.public_key(record.keyid))
    store.close()
    asked = []

    def handler(what: str) -> str:
        asked.append(what)
        return softhsm.pin

    signer = Signer.from_priv_key_uri(f"hsmsign:{record.keyid}", public, handler)
    public.verify_signature(signer.sign(b"payload"), b"payload")
    assert asked == ["pin"]
