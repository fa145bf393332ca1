"""The YubiKey PIV store against the PIV card emulator, in process: yubikit speaks APDUs to
`tests/piv_emulator.py` through a SmartCardConnection, exactly as it does to a YubiKey.

What is checked is what the card ends up holding and what it was asked (its log), plus what
python-tuf verifies: keys generated on the device with the policies asked for, signatures, PIN
safety (tries read before every VERIFY, no try spent at one left, none retried), touch, factory
defaults, attestation bound to the TUF key ID, and every bad input the issue lists.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from piv_emulator import (
    DEFAULT_MANAGEMENT_KEY,
    PIN_ALWAYS,
    PIN_ONCE,
    TOUCH_ALWAYS,
    TOUCH_CACHED,
    TOUCH_NEVER,
    AttestationCA,
    EmulatedDevice,
    PivCard,
)
from tuf.api.metadata import Metadata, Root

from hsmsign.config import TokenConfig
from hsmsign.errors import HsmsignError
from hsmsign.keys import ALGORITHMS, key_id, tuf_key
from hsmsign.keystore.attestation import AttestationError, verify_attestation
from hsmsign.keystore.stores import KeyStores
from hsmsign.keystore.yubikey import YubiKeyOptions, YubiKeyStore
from hsmsign.secrets import Secrets
from hsmsign.signing import SigningService, YubiKeySigner, signer_for

P256 = ALGORITHMS["ecdsa-p256"]
PIN = "123456"
VERIFY, SIGN = 0x20, 0x87
NO_TOKEN_HERE = TokenConfig(module="/nonexistent/pkcs11.so")


@pytest.fixture(scope="module")
def ca():
    return AttestationCA.create()


@pytest.fixture
def card(ca):
    return PivCard(ca=ca)


class Prompter:
    """Answers prompts like a person at a terminal would, and remembers what was asked."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.asked: list[str] = []
        self.told: list[str] = []

    def ask_secret(self, prompt: str) -> str:
        self.asked.append(prompt)
        return self.answers.pop(0)

    def tell(self, message: str) -> None:
        self.told.append(message)


def make_store(tmp_path, *cards, environ=None, prompter=None, force=False, serial=None):
    messages: list[str] = []
    environ = {"HSMSIGN_PIN": PIN} if environ is None else environ
    store = YubiKeyStore(Secrets(environ=environ, prompter=prompter), home=tmp_path / "home",
                         force=force, serial=serial, notify=messages.append,
                         devices=lambda: [EmulatedDevice(c, f"Yubico YubiKey OTP+FIDO+CCID 00 0{i}")
                                          for i, c in enumerate(cards) if not c.removed])
    store.messages = messages
    return store


def touch_prompts(store) -> list[str]:
    return [m for m in store.messages if m.startswith("Touch your YubiKey")]


def test_generate_on_device_with_policies_certificate_and_listing(card, tmp_path):
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(slot="9c", touch="always", pin_policy="once"))
    slot = card.keys[0x9C]
    # Generated on the card, with the policies asked for; the key ID is the card's public key's.
    assert slot.generated and (slot.pin_policy, slot.touch_policy) == (PIN_ONCE, TOUCH_ALWAYS)
    assert record.keyid == key_id(slot.private.public_key())
    assert (record.role, record.store, record.location) == ("root", "yubikey", "YubiKey 12345678 slot 9c")
    # The slot's certificate names hsmsign, the role and the key ID (what ykcs11 lists).
    from cryptography import x509

    cert = x509.load_der_x509_certificate(_certificate_der(card, 0x9C))
    assert cert.subject.rfc4514_string() == f"CN=hsmsign root {record.keyid[:16]}"
    assert key_id(cert.public_key()) == record.keyid
    # Listing needs no PIN and finds it again from the card alone (a fresh store and home).
    before = card.log.count(VERIFY)
    again = make_store(tmp_path / "other", card, environ={})
    assert again.list_keys() == [record]
    assert card.log.count(VERIFY) == before
    # The certificate's signature needed a touch; factory defaults are warned about.
    assert touch_prompts(store) == ["Touch your YubiKey (serial 12345678) now to sign the slot's certificate"]
    assert card.touches == 1
    assert any("factory default PIN, PUK and management key" in m for m in store.messages)


def _certificate_der(card: PivCard, slot: int) -> bytes:
    from piv_emulator import SLOT_OBJECTS, tlv_dict

    return tlv_dict(tlv_dict(card.objects[SLOT_OBJECTS[slot]])[0x53])[0x70]


def test_signing_service_signs_root_with_the_yubikey_pin_asked_once(card, tmp_path):
    prompter = Prompter(PIN)
    stores = KeyStores(tmp_path / "home", Secrets(environ={}, prompter=prompter), NO_TOKEN_HERE,
                       yubikey_devices=lambda: [EmulatedDevice(card)])
    messages = []
    stores.yubikey.notify = messages.append
    record, why = stores.generate("root", None, P256, "auto")
    assert record.store == "yubikey" and "a YubiKey is plugged in" in why
    signer = signer_for(stores, record.keyid)
    assert isinstance(signer, YubiKeySigner)

    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    service = SigningService(stores)
    signed = []
    for version in (1, 2, 3):
        md = Metadata(Root(version=version, expires=expires))
        md.signed.add_key(signer.public_key, "root")
        report = service.sign(md, "root", {record.keyid: signer.public_key}, 1)
        assert report.signed_here == [record.keyid] and report.missing == 0
        signed.append(md)
    for md in signed:  # python-tuf verifies what the card signed
        again = Metadata.from_bytes(md.to_bytes())
        again.signed.verify_delegate("root", again.signed_bytes, again.signatures)
    # One prompt for the PIN in the whole process, one VERIFY before each private key use,
    # and a touch for the certificate and each signature.
    assert [p for p in prompter.asked if "PIN" in p] == ["Enter PIN for token YubiKey 12345678: "]
    assert card.log.count(VERIFY) >= 4 and card.touches == 4
    assert len([m for m in messages if m == "Touch your YubiKey (serial 12345678) now"]) == 3


def test_pin_always_slot_verifies_right_before_each_signature(card, tmp_path):
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(pin_policy="always", touch="never"))
    assert card.keys[0x9C].pin_policy == PIN_ALWAYS
    for _ in range(3):
        tuf_key(store.public_key(record.keyid)).verify_signature(
            YubiKeySigner(store, record.keyid).sign(b"payload"), b"payload")
    # Each signature was preceded by its own VERIFY (the card refuses otherwise, below).
    sequence = [i for i in card.log.instructions if i in (VERIFY, SIGN)]
    assert sequence[-6:] == [VERIFY, SIGN] * 3
    assert touch_prompts(store) == []  # touch policy never: no prompt

    # The card itself enforces it: a second signature after one VERIFY is refused.
    from cryptography.hazmat.primitives import hashes
    from piv_emulator import in_process_connection
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import KEY_TYPE, SLOT, PivSession

    piv = PivSession(in_process_connection(card))
    piv.verify_pin(PIN)
    piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"one", hashes.SHA256())
    with pytest.raises(ApduError) as e:
        piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"two", hashes.SHA256())
    assert e.value.sw == 0x6982


def test_wrong_pin_says_tries_left_and_one_try_left_is_refused_without_force(card, tmp_path):
    good = make_store(tmp_path, card)
    record = good.generate("root", P256, YubiKeyOptions(touch="never"))
    wrong = make_store(tmp_path, card, environ={"HSMSIGN_PIN": "654321"})
    with pytest.raises(HsmsignError, match="wrong PIN for YubiKey 12345678; 2 tries left"):
        wrong.sign(record.keyid, b"x")
    with pytest.raises(HsmsignError, match="1 try left before the PIN is blocked"):
        make_store(tmp_path, card, environ={"HSMSIGN_PIN": "654321"}).sign(record.keyid, b"x")
    assert card.pin.remaining == 1
    # One try left: nothing is sent, whatever the PIN, unless forced.
    verifies = card.log.count(VERIFY)
    with pytest.raises(HsmsignError, match="one PIN try left .* --force"):
        make_store(tmp_path, card).sign(record.keyid, b"x")
    assert card.pin.remaining == 1
    assert card.log.count(VERIFY) == verifies  # the counter comes from GET METADATA
    # A PIN of the wrong length is never sent either.
    with pytest.raises(HsmsignError, match="6 to 8 characters"):
        make_store(tmp_path, card, environ={"HSMSIGN_PIN": "1234"}, force=True).sign(record.keyid, b"x")
    assert card.pin.remaining == 1
    # --force with the right PIN signs, and the counter is back to 3.
    make_store(tmp_path, card, force=True).sign(record.keyid, b"x")
    assert card.pin.remaining == 3
    # Blocked: said so, and nothing is tried.
    card.pin.remaining = 0
    with pytest.raises(HsmsignError, match="PIN of YubiKey 12345678 is blocked"):
        make_store(tmp_path, card, force=True).sign(record.keyid, b"x")


def test_wrong_pin_from_the_prompter_is_not_retried(card, tmp_path):
    record = make_store(tmp_path, card).generate("root", P256, YubiKeyOptions(touch="never"))
    prompter = Prompter("000000", PIN)
    store = make_store(tmp_path, card, environ={}, prompter=prompter)
    with pytest.raises(HsmsignError, match="wrong PIN"):
        store.sign(record.keyid, b"x")
    assert len(prompter.asked) == 1 and card.pin.remaining == 2


def test_touch_timeout_and_card_pulled_mid_signature(card, tmp_path):
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(touch="always"))
    card.touch_mode = "never"
    with pytest.raises(HsmsignError, match="was not touched in time; nothing was signed"):
        store.sign(record.keyid, b"x")
    assert touch_prompts(store)[-1] == "Touch your YubiKey (serial 12345678) now"
    card.touch_mode = "auto"
    card.pull_when(lambda apdu: apdu[1] == SIGN and apdu[3] == 0x9C)
    with pytest.raises(HsmsignError, match="stopped answering while signing with key"):
        store.sign(record.keyid, b"x")
    assert card.removed
    with pytest.raises(HsmsignError, match="no YubiKey is plugged in"):
        make_store(tmp_path, card).generate("root", P256)


def test_cached_touch_prompts_once_within_fifteen_seconds(card, tmp_path):
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(touch="cached"))
    assert card.keys[0x9C].touch_policy == TOUCH_CACHED
    for _ in range(3):
        store.sign(record.keyid, b"x")
    assert touch_prompts(store) == ["Touch your YubiKey (serial 12345678) now to sign the slot's certificate"]
    assert card.touches == 1


def test_management_key_wrong_stored_or_default(card, tmp_path):
    card.mgmt_key = bytes(range(24))  # not the default, and not stored on the card
    with pytest.raises(HsmsignError, match="set HSMSIGN_MANAGEMENT_KEY"):
        make_store(tmp_path, card).generate("root", P256)
    store = make_store(tmp_path, card, environ={"HSMSIGN_PIN": PIN,
                                                "HSMSIGN_MANAGEMENT_KEY": "ff" * 24})
    with pytest.raises(HsmsignError, match="wrong management key for YubiKey 12345678"):
        store.generate("root", P256)
    assert card.keys == {}
    store = make_store(tmp_path, card, environ={"HSMSIGN_PIN": PIN,
                                                "HSMSIGN_MANAGEMENT_KEY": bytes(range(24)).hex()})
    assert store.generate("root", P256).role == "root"


def test_occupied_slot_is_refused_unless_forced_and_changed_slot_is_caught(card, tmp_path):
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(touch="never"))
    with pytest.raises(HsmsignError, match=f"slot 9c of YubiKey 12345678 already holds key {record.keyid}"):
        make_store(tmp_path, card).generate("root", P256, YubiKeyOptions(touch="never"))
    # Someone replaces the key in 9c behind hsmsign's back (ykman, another machine).
    card.keys[0x9C].private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(HsmsignError, match="now holds another key .*nothing was signed"):
        store.sign(record.keyid, b"x")
    forced = make_store(tmp_path, card, force=True).generate("root", P256, YubiKeyOptions(touch="never"))
    assert forced.keyid != record.keyid
    # The slot is emptied (a PIV reset elsewhere) while this process still knows the key.
    listed = make_store(tmp_path, card)
    assert listed.keyids() == [forced.keyid]
    del card.keys[0x9C]
    signs = card.log.count(SIGN)
    with pytest.raises(HsmsignError, match="slot 9c of YubiKey 12345678 is empty; nothing was signed"):
        listed.sign(forced.keyid, b"x")
    assert card.log.count(SIGN) == signs


def test_yubikey_4_without_metadata_remembers_policies_and_wrong_key_type(ca, tmp_path):
    card = PivCard(ca=ca, serial=4444444, version=(4, 3, 5))
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(touch="always", pin_policy="once"))
    # No GET METADATA on a YubiKey 4: the policies come from what hsmsign remembered ...
    assert 0xF7 not in card.log.instructions
    store.sign(record.keyid, b"x")
    assert touch_prompts(store)[-1] == "Touch your YubiKey (serial 4444444) now"
    # ... or, in another home, from the slot's attestation.
    elsewhere = make_store(tmp_path / "elsewhere", card)
    elsewhere.sign(record.keyid, b"x")
    assert touch_prompts(elsewhere) == ["Touch your YubiKey (serial 4444444) now"]
    assert card.log.count(0xF9) >= 1
    # The slot now holds a key of another type than its certificate says.
    from cryptography.hazmat.primitives.asymmetric import rsa
    from piv_emulator import RSA2048, SlotKey

    card.keys[0x9C] = SlotKey(rsa.generate_private_key(65537, 2048), RSA2048, PIN_ONCE, TOUCH_NEVER, True)
    with pytest.raises(HsmsignError, match="does not hold the ecdsa-p256 key .*nothing was signed"):
        make_store(tmp_path, card).sign(record.keyid, b"x")


def test_firmware_limits_roca_and_new_key_types(ca, tmp_path):
    roca = PivCard(ca=ca, serial=4230000, version=(4, 3, 4))
    with pytest.raises(HsmsignError, match="ROCA"):
        make_store(tmp_path, roca).generate("root", ALGORITHMS["rsa-3072"])
    with pytest.raises(HsmsignError, match="cannot do this"):
        make_store(tmp_path, PivCard(ca=ca)).generate("root", ALGORITHMS["ed25519"])
    new = PivCard(ca=ca, serial=5700000, version=(5, 7, 1))
    store = make_store(tmp_path, new)
    record = store.generate("root", ALGORITHMS["ed25519"], YubiKeyOptions(touch="never"))
    assert record.algorithm == "ed25519"
    tuf_key(store.public_key(record.keyid)).verify_signature(
        YubiKeySigner(store, record.keyid).sign(b"payload"), b"payload")
    p384 = store.generate("targets", ALGORITHMS["ecdsa-p384"], YubiKeyOptions(slot="9a", touch="never"))
    tuf_key(store.public_key(p384.keyid)).verify_signature(
        YubiKeySigner(store, p384.keyid).sign(b"payload"), b"payload")


def test_remove_deletes_from_firmware_5_7_and_refuses_before(ca, tmp_path):
    old = PivCard(ca=ca, serial=5400000, version=(5, 4, 3))
    store = make_store(tmp_path, old)
    record = store.generate("root", P256, YubiKeyOptions(touch="never"))
    with pytest.raises(HsmsignError, match="cannot delete the key in slot 9c.*nothing was removed"):
        store.remove(record.keyid)
    assert 0x9C in old.keys and store.keyids() == [record.keyid]
    new = PivCard(ca=ca, serial=5700000, version=(5, 7, 1))
    store = make_store(tmp_path, new)
    record = store.generate("root", P256, YubiKeyOptions(touch="never"))
    store.remove(record.keyid)
    assert new.keys == {} and make_store(tmp_path, new).list_keys() == []


def test_two_yubikeys_need_a_serial(ca, tmp_path):
    first, second = PivCard(ca=ca, serial=1111111), PivCard(ca=ca, serial=2222222)
    with pytest.raises(HsmsignError, match="several YubiKeys are plugged in .*1111111, 2222222.*--serial"):
        make_store(tmp_path, first, second).generate("root", P256)
    assert first.keys == {} and second.keys == {}
    record = make_store(tmp_path, first, second, serial=2222222).generate("root", P256)
    assert record.location == "YubiKey 2222222 slot 9c" and first.keys == {}
    with pytest.raises(HsmsignError, match="no YubiKey with serial 3333333"):
        make_store(tmp_path, first, second, serial=3333333).generate("root", P256)


def test_attestation_from_the_device_is_bound_to_the_key_id(ca, card, tmp_path):
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(touch="cached", pin_policy="always"))
    slot_cert, device_cert, serial = store.attestation(record.keyid)
    result = verify_attestation(slot_cert, device_cert, record.keyid, extra_trust=[ca.cert])
    assert (result.keyid, result.serial, serial) == (record.keyid, 12345678, 12345678)
    assert (result.pin_policy, result.touch_policy, result.firmware) == ("always", "cached", "5.4.3")
    other = key_id(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(AttestationError, match="attests a different key"):
        verify_attestation(slot_cert, device_cert, other, extra_trust=[ca.cert])
    with pytest.raises(AttestationError, match="does not chain to a trusted attestation root"):
        verify_attestation(slot_cert, device_cert, record.keyid)  # the test CA is not Yubico's


def test_yubikey_4_attestation_chain_without_basic_constraints(ca, tmp_path):
    card = PivCard(ca=ca, serial=4444444, version=(4, 3, 5))
    store = make_store(tmp_path, card)
    record = store.generate("root", P256)
    from cryptography import x509

    slot_cert, device_cert, _ = store.attestation(record.keyid)
    with pytest.raises(x509.ExtensionNotFound):
        x509.load_der_x509_certificate(device_cert).extensions.get_extension_for_class(
            x509.BasicConstraints)
    result = verify_attestation(slot_cert, device_cert, record.keyid, extra_trust=[ca.cert])
    assert (result.serial, result.firmware, result.form_factor) == (4444444, "4.3.5", None)


def test_import_from_file_route_and_imported_keys_cannot_be_attested(card, tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    store = make_store(tmp_path, card)
    record = store.import_private(private, "root", YubiKeyOptions(touch="never"))
    assert record.keyid == key_id(private.public_key()) and not card.keys[0x9C].generated
    tuf_key(private.public_key()).verify_signature(
        YubiKeySigner(store, record.keyid).sign(b"payload"), b"payload")
    with pytest.raises(HsmsignError, match="imported, not generated on the device"):
        store.attestation(record.keyid)


def test_setup_replaces_factory_secrets_and_stores_a_protected_management_key(card, tmp_path):
    environ = {"HSMSIGN_PIN": PIN, "HSMSIGN_PUK": "12345678", "HSMSIGN_NEW_PIN": "24681357",
               "HSMSIGN_NEW_PUK": "97531864"}
    store = make_store(tmp_path, card, environ=environ)
    done = store.setup()
    assert done[:2] == ["PUK changed", "PIN changed"] and "protected by the PIN" in done[2]
    assert card.pin.value == b"24681357" and card.puk.value == b"97531864"
    assert card.mgmt_key != DEFAULT_MANAGEMENT_KEY
    # From now on the management key is read from the card with the PIN: no default, no warning.
    after = make_store(tmp_path, card, environ={"HSMSIGN_PIN": "24681357"})
    record = after.generate("root", P256, YubiKeyOptions(touch="never"))
    assert record.role == "root" and not any("factory default" in m for m in after.messages)


def test_setup_refuses_weak_values_and_a_wrong_puk_changes_nothing_else(card, tmp_path):
    base = {"HSMSIGN_PIN": PIN, "HSMSIGN_PUK": "12345678", "HSMSIGN_NEW_PUK": "97531864"}
    with pytest.raises(HsmsignError, match="new PIN is the factory default"):
        make_store(tmp_path, card, environ={**base, "HSMSIGN_NEW_PIN": PIN}).setup()
    with pytest.raises(HsmsignError, match="6 to 8 characters"):
        make_store(tmp_path, card, environ={**base, "HSMSIGN_NEW_PIN": "123"}).setup()
    with pytest.raises(HsmsignError, match="wrong PUK .* 2 tries left; nothing was changed"):
        make_store(tmp_path, card, environ={**base, "HSMSIGN_NEW_PIN": "24681357",
                                            "HSMSIGN_PUK": "87654321"}).setup()
    assert card.pin.value == b"123456" and card.mgmt_key == DEFAULT_MANAGEMENT_KEY


def test_reset_erases_keys_and_restores_factory_values(card, tmp_path):
    store = make_store(tmp_path, card)
    store.generate("root", P256, YubiKeyOptions(touch="never"))
    card.pin.value = b"87654321"
    assert store.reset() == 12345678
    assert card.keys == {} and card.pin.value == b"123456" and card.pin.remaining == 3
    assert make_store(tmp_path, card).list_keys() == []


def test_info_lists_serial_firmware_pin_tries_and_slots(ca, tmp_path):
    card = PivCard(ca=ca, serial=7777777, version=(5, 4, 3), form_factor=0x01)
    store = make_store(tmp_path, card)
    record = store.generate("root", P256, YubiKeyOptions(touch="cached"))
    card.pin.remaining = 2
    (info,) = make_store(tmp_path, card).info()
    assert (info.serial, info.firmware, info.pin_tries, info.pin_tries_total) == (7777777, "5.4.3", 2, 3)
    assert info.form_factor == "Keychain (USB-A)"
    assert info.factory_defaults == ["PIN", "PUK", "management key"]
    (slot,) = info.slots
    assert (slot.slot, slot.key_type, slot.keyid, slot.role) == ("9c", "ECCP256", record.keyid, "root")
    assert (slot.pin_policy, slot.touch_policy, slot.generated) == ("once", "cached", True)
    assert info.to_json()["kind"] == "yubikey"


def test_pulled_after_a_partial_setup_or_generation_says_what_was_done(card, tmp_path):
    """A YubiKey pulled half-way: the message says what already happened on it, never
    "nothing was changed" (which would send the user to spend a PUK try on the old PUK)."""
    environ = {"HSMSIGN_PIN": PIN, "HSMSIGN_PUK": "12345678", "HSMSIGN_NEW_PIN": "24681357",
               "HSMSIGN_NEW_PUK": "97531864"}
    card.pull_when(lambda apdu: apdu[1] == 0x24 and apdu[3] == 0x80)  # CHANGE REFERENCE, PIN
    with pytest.raises(HsmsignError, match="stopped after: PUK changed .*stopped answering.*the "
                                           "new values are in effect") as e:
        make_store(tmp_path, card, environ=environ).setup()
    assert "nothing was" not in str(e.value) and card.puk.value == b"97531864"


def test_pulled_while_the_certificate_is_written_names_the_new_key(card, tmp_path):
    card.pull_when(lambda apdu: apdu[1] == 0xDB)  # PUT DATA: the slot's certificate
    with pytest.raises(HsmsignError, match="the key was generated in slot 9c of YubiKey 12345678 "
                                           "but its certificate was not written \\(the YubiKey "
                                           "stopped answering") as e:
        make_store(tmp_path, card).generate("root", P256, YubiKeyOptions(touch="never"))
    assert "nothing was" not in str(e.value) and 0x9C in card.keys


def test_a_home_that_is_refused_is_refused_before_a_key_is_made(card, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "notes.txt").write_text("someone's")
    with pytest.raises(HsmsignError, match="is open to others"):
        make_store(tmp_path, card).generate("root", P256, YubiKeyOptions(touch="never"))
    assert card.keys == {}  # nothing on the device, nothing to clean up
