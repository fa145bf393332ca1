"""YubiKey PIV attestation checked with real X.509 chains: a test CA stands in for Yubico's, in
the shapes YubiKeys produce (a YubiKey 4 device certificate without BasicConstraints)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from conftest import Cli
from hsmsign.keys import key_id
from hsmsign.keystore.attestation import (
    OID_FIRMWARE,
    OID_FORM_FACTOR,
    OID_POLICY,
    OID_SERIAL,
    yubico_roots,
)

NOW = datetime.now(timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, public_key, issuer: str, issuer_key, *, ca: bool | None, extensions=()):
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650)))
    if ca is not None:  # YubiKey 4 device certificates have no BasicConstraints at all
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A test root (RSA, like Yubico's) and a device certificate (slot f9) it signed."""
    root_key = rsa.generate_private_key(65537, 2048)
    root = _cert("Test PIV Root CA", root_key.public_key(), "Test PIV Root CA", root_key, ca=True)
    device_key = ec.generate_private_key(ec.SECP256R1())
    device = _cert("Yubico PIV Attestation", device_key.public_key(), "Test PIV Root CA", root_key,
                   ca=None)
    d = tmp_path_factory.mktemp("ca")
    (d / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (d / "f9.pem").write_bytes(device.public_bytes(serialization.Encoding.PEM))
    return {"dir": d, "device_key": device_key, "root": root}


def attest_slot(ca, key, path: Path, *, serial=12345678, firmware=b"\x05\x04\x03", policy=b"\x02\x02"):
    from asn1crypto.core import Integer

    cert = _cert("YubiKey PIV Attestation 9c", key.public_key(), "Yubico PIV Attestation",
                 ca["device_key"], ca=None, extensions=[
                     (OID_FIRMWARE, firmware), (OID_SERIAL, Integer(serial).dump()),
                     (OID_POLICY, policy), (OID_FORM_FACTOR, b"\x03")])
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def cli(home, no_token_env):
    return Cli(home, dict(no_token_env))


def test_bundled_yubico_roots_are_shipped():
    names = {c.subject.rfc4514_string() for c in yubico_roots()}
    assert "CN=Yubico PIV Root CA Serial 263751" in names
    assert "CN=Yubico U2F Root CA Serial 457200631" in names
    assert len(names) == 5


def test_attestation_binds_the_key_in_the_metadata(ca, cli, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    keyid = key_id(key.public_key())
    slot = attest_slot(ca, key, tmp_path / "9c.pem")
    out = json.loads(cli("key", "attest", keyid, "--certificate", str(slot), "--intermediate",
                         str(ca["dir"] / "f9.pem"), "--trust-roots", str(ca["dir"] / "root.pem"),
                         "--json").stdout)
    assert out["keyid"] == keyid and out["serial"] == 12345678 and out["firmware"] == "5.4.3"
    assert (out["pin_policy"], out["touch_policy"]) == ("once", "always")
    assert out["form_factor"] == "USB-C keychain"
    assert out["chain"] == ["CN=Yubico PIV Attestation", "CN=Test PIV Root CA"]


def test_attestation_of_another_key_is_refused(ca, cli, tmp_path):
    attested = ec.generate_private_key(ec.SECP256R1())
    other = key_id(ec.generate_private_key(ec.SECP256R1()).public_key())
    slot = attest_slot(ca, attested, tmp_path / "9c.pem")
    error = cli.fails("key", "attest", other, "--certificate", str(slot), "--intermediate",
                      str(ca["dir"] / "f9.pem"), "--trust-roots", str(ca["dir"] / "root.pem")
                      ).error_lines[0]
    assert "attests a different key" in error


def test_untrusted_chain_and_forged_signature_are_refused(ca, cli, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    keyid = key_id(key.public_key())
    slot = attest_slot(ca, key, tmp_path / "9c.pem")
    args = ["key", "attest", keyid, "--certificate", str(slot), "--intermediate", str(ca["dir"] / "f9.pem")]
    # Without the test root, only Yubico's roots are trusted: the chain ends nowhere.
    assert "does not chain to a trusted attestation root" in cli.fails(*args).error_lines[0]
    # A device certificate that did not sign the attestation (another YubiKey's f9).
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = _cert("Yubico PIV Attestation", stranger.public_key(), "Test PIV Root CA",
                   stranger, ca=None)
    (tmp_path / "f9-other.pem").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    error = cli.fails("key", "attest", keyid, "--certificate", str(slot), "--intermediate",
                      str(tmp_path / "f9-other.pem"), "--trust-roots", str(ca["dir"] / "root.pem")
                      ).error_lines[0]
    assert "not signed by the device certificate" in error
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "not a certificate" in cli.fails("key", "attest", keyid, "--certificate",
                                            str(tmp_path / "junk.pem"), "--intermediate",
                                            str(ca["dir"] / "f9.pem")).error_lines[0]


def test_attested_key_must_be_a_root_key_of_the_repository(ca, cli, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    keyid = key_id(key.public_key())
    slot = attest_slot(ca, key, tmp_path / "9c.pem")
    cli("repo", "init", str(tmp_path / "repo"))
    error = cli.fails("key", "attest", keyid, "--certificate", str(slot), "--intermediate",
                      str(ca["dir"] / "f9.pem"), "--trust-roots", str(ca["dir"] / "root.pem"),
                      "--repo", str(tmp_path / "repo")).error_lines[0]
    assert "is not a root key of" in error
    # A repository whose root is the attested key: accepted.
    pub = tmp_path / "root.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    cli("repo", "init", str(tmp_path / "repo2"), "--root-key", str(pub))
    out = json.loads(cli("key", "attest", keyid, "--certificate", str(slot), "--intermediate",
                         str(ca["dir"] / "f9.pem"), "--trust-roots", str(ca["dir"] / "root.pem"),
                         "--repo", str(tmp_path / "repo2"), "--json").stdout)
    assert out["keyid"] == keyid
