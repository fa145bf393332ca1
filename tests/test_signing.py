"""Signers from every store sign TUF metadata that python-tuf verifies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Root, Targets

from conftest import PASSPHRASE, Cli, clean_environ, passphrase_env
from hsmsign.config import load_token_config
from hsmsign.errors import HsmsignError
from hsmsign.keystore.stores import KeyStores
from hsmsign.secrets import Secrets
from hsmsign.signing import FileSigner, TokenSigner, signer_for


@pytest.fixture
def stores(keyed_home, softhsm):
    environ = {"HSMSIGN_PIN": softhsm.pin, **passphrase_env()}
    secrets = Secrets(environ=environ)
    config = load_token_config(keyed_home, environ=softhsm.env())
    s = KeyStores(keyed_home, secrets, config)
    yield s
    s.close()


def test_root_on_token_and_targets_in_file_sign_metadata_python_tuf_verifies(stores, softhsm,
                                                                               keyed_home):
    cli = Cli(keyed_home, clean_environ(**softhsm.env(), **passphrase_env()))
    root_keyid = json.loads(cli("key", "generate", "root", "--store", "token", "--json").stdout)["keyid"]
    targets_keyid = next(r.keyid for r in stores.files.list_keys() if r.role == "targets")

    root_signer = signer_for(stores, root_keyid)
    targets_signer = signer_for(stores, targets_keyid)
    assert isinstance(root_signer, TokenSigner) and isinstance(targets_signer, FileSigner)

    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    root = Metadata(Root(expires=expires))
    root.signed.add_key(root_signer.public_key, "root")
    root.signed.add_key(targets_signer.public_key, "targets")
    root.sign(root_signer)
    targets = Metadata(Targets(expires=expires))
    targets.sign(targets_signer)

    # python-tuf verifies both through the root's delegations, from the serialized bytes.
    root_again = Metadata.from_bytes(root.to_bytes())
    root_again.signed.verify_delegate("root", root_again.signed_bytes, root_again.signatures)
    targets_again = Metadata.from_bytes(targets.to_bytes())
    root_again.signed.verify_delegate("targets", targets_again.signed_bytes,
                                      targets_again.signatures)
    # A changed byte fails.
    targets_again.signed.version += 1
    from tuf.api.exceptions import UnsignedMetadataError

    with pytest.raises(UnsignedMetadataError):
        root_again.signed.verify_delegate("targets", targets_again.signed_bytes,
                                          targets_again.signatures)


def test_token_wins_when_a_key_is_in_both_stores(stores, keyed_home, softhsm):
    targets = next(r for r in stores.files.list_keys() if r.role == "targets")
    stores.token.import_private(stores.files.private_key(targets.keyid), "targets")
    try:
        assert [r.store for r in stores.locate(targets.keyid)] == ["token", "file"]
        signer = signer_for(stores, targets.keyid)
        assert isinstance(signer, TokenSigner)
        signer.public_key.verify_signature(signer.sign(b"x"), b"x")
    finally:
        stores.token.remove(targets.keyid)


def test_every_file_algorithm_signs(stores):
    for record in stores.files.list_keys():
        signer = signer_for(stores, record.keyid)
        sig = signer.sign(b"payload")
        assert sig.keyid == record.keyid
        signer.public_key.verify_signature(sig, b"payload")


def test_file_key_is_decrypted_once_per_process(stores):
    record = next(r for r in stores.files.list_keys() if r.role == "snapshot")
    signer = signer_for(stores, record.keyid)
    signer.sign(b"one")
    # The passphrase is gone from the environment now; the unlocked key is kept.
    stores.secrets.environ = {}
    stores.secrets._passphrases.clear()
    signer.sign(b"two")
    assert signer_for(stores, record.keyid).sign(b"three").keyid == record.keyid


def test_hsmsign_uri_scheme_finds_the_key(keyed_home, monkeypatch, softhsm):
    from hsmsign.keys import tuf_key
    from hsmsign.keystore.file import FileKeyStore

    files = FileKeyStore(keyed_home, Secrets(environ={}))
    record = next(r for r in files.list_keys() if r.role == "releases")
    public = tuf_key(files.public_key(record.keyid))
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HSMSIGN_HOME", str(keyed_home))
    # A handler given is the one source of secrets: a wrong one in the environment is not used.
    monkeypatch.setenv("HSMSIGN_DELEGATION_PASSPHRASE", "not the passphrase")
    asked = []

    def handler(what: str) -> str:
        asked.append(what)
        return PASSPHRASE

    signer = Signer.from_priv_key_uri(f"hsmsign:{record.keyid}", public, handler)
    public.verify_signature(signer.sign(b"data"), b"data")
    assert asked == ["passphrase"]  # securesystemslib's names: "pin", "passphrase"
    # A role whose name holds "PIN" is still a passphrase.
    from hsmsign.keys import ALGORITHMS, generate_private_key

    pinned = files.add(generate_private_key(ALGORITHMS["ecdsa-p256"]), "PINNED", None, PASSPHRASE)
    asked.clear()
    Signer.from_priv_key_uri(f"hsmsign:{pinned.keyid}", tuf_key(files.public_key(pinned.keyid)),
                             handler).sign(b"data")
    assert asked == ["passphrase"]

    # A public key whose ID is the key's but whose material is another key's is refused
    # up front: every signature would fail to verify against it.
    other = next(r for r in files.list_keys() if r.keyid != record.keyid)
    impostor = tuf_key(files.public_key(other.keyid))
    impostor = type(impostor)(record.keyid, impostor.keytype, impostor.scheme, impostor.keyval)
    with pytest.raises(HsmsignError, match="not that key's public key"):
        Signer.from_priv_key_uri(f"hsmsign:{record.keyid}", impostor, handler)

    # No handler: the environment, and a message for a library, not a terminal.
    monkeypatch.delenv("HSMSIGN_DELEGATION_PASSPHRASE")
    unaided = Signer.from_priv_key_uri(f"hsmsign:{record.keyid}", public)
    with pytest.raises(HsmsignError, match="no secrets_handler was given to "
                                           "Signer.from_priv_key_uri to ask; set HSMSIGN_"):
        unaided.sign(b"data")


def _batch(n: int) -> list[Metadata]:
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    return [Metadata(Targets(version=i + 1, expires=expires)) for i in range(n)]


@pytest.fixture
def token_key(stores):
    from hsmsign.keys import ALGORITHMS, tuf_key

    record = stores.token.generate("targets", ALGORITHMS["ecdsa-p256"])
    yield tuf_key(stores.token.public_key(record.keyid))
    stores.token.remove(record.keyid)


def test_a_big_batch_is_signed_ahead_on_the_token_and_every_signature_checked(stores, token_key):
    import threading

    from hsmsign.signing import PIPELINE_MIN, SigningService

    keys = {token_key.keyid: token_key}
    mds = _batch(PIPELINE_MIN * 2 + 3)
    reports = SigningService(stores).sign_many([(md, "targets", keys, 1) for md in mds])
    for md, report in zip(mds, reports, strict=True):
        token_key.verify_signature(md.signatures[token_key.keyid], md.signed_bytes)
        assert report.signed_here == report.valid == [token_key.keyid] and report.missing == 0
    assert len({md.signatures[token_key.keyid].signature for md in mds}) == len(mds)
    assert not [t for t in threading.enumerate() if t.name == "hsmsign-sign"]


def test_a_bad_signature_in_a_big_batch_stops_it_and_is_never_kept(stores, token_key):
    """A public key that does not match what the token signs with (as a token returning
    garbage would look): the batch stops with one error, and the signing thread is gone."""
    import threading

    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.signer import SSlibKey

    from hsmsign.errors import HsmsignError
    from hsmsign.keys import tuf_key
    from hsmsign.signing import PIPELINE_MIN, SigningService

    other = tuf_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    wrong = SSlibKey(token_key.keyid, other.keytype, other.scheme, other.keyval)
    mds = _batch(PIPELINE_MIN * 2)
    bad = PIPELINE_MIN + 1
    items = [(md, "targets", {token_key.keyid: wrong if i == bad else token_key}, 1)
             for i, md in enumerate(mds)]
    with pytest.raises(HsmsignError, match=f"signature key {token_key.keyid[:7]} made for "
                                           "targets does not verify; nothing was written"):
        SigningService(stores).sign_many(items)
    assert all(not md.signatures for md in mds[bad:])
    assert all(token_key.keyid in md.signatures for md in mds[:bad])
    assert not [t for t in threading.enumerate() if t.name == "hsmsign-sign"]
