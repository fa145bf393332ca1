"""`hsmsign serve` over HTTPS with mutual TLS: a test CA, server and client certificates made
with `cryptography`; clients named by their certificate's CN or a DNS SAN."""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata

from conftest import Cli
from service_harness import (
    service_home,  # noqa: F401 - a fixture
    signed_of,
    start_service,
    tuf_key,
    write_policy,
)

import hsmsign.service.client  # noqa: F401 - registers hsmsign+https:
from hsmsign.service.client import ServiceClient
from hsmsign.service.errors import RemoteError


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # name -> (cert, key)

    def env(self, client: str) -> dict[str, str]:
        cert, key = self.clients[client]
        return {"HSMSIGN_SIGNER_CERT": str(cert), "HSMSIGN_SIGNER_KEY": str(key),
                "HSMSIGN_SIGNER_CA": str(self.ca)}


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(base: Path, name: str, cert, key) -> tuple[Path, Path]:
    cert_path, key_path = base / f"{name}.crt", base / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _ca(name: str):
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _issue(ca, ca_key, cn: str, *, dns=(), ips=(), server=False):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("hsmsign test CA")
    (base / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = _write(base, "server", *_issue(ca, ca_key, "signer",
                                                             dns=["localhost"], ips=["127.0.0.1"],
                                                             server=True))
    clients = {
        "release": _write(base, "release", *_issue(ca, ca_key, "release-pipeline")),
        "by-san": _write(base, "by-san", *_issue(ca, ca_key, "some host",
                                                 dns=["nightly.ci.example"])),
        "stranger": _write(base, "stranger", *_issue(ca, ca_key, "stranger")),
    }
    rogue, rogue_key = _ca("rogue CA")
    clients["rogue"] = _write(base, "rogue", *_issue(rogue, rogue_key, "release-pipeline"))
    return Pki(base / "ca.crt", server_cert, server_key, clients)


@pytest.fixture(scope="module")
def tls_service(service_home, pki, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    policy = write_policy(base / "policy.toml",
                          {"name": "release", "cn": "release-pipeline",
                           "roles": ["timestamp", "snapshot"], "max_expires_days": 2},
                          {"name": "nightly", "cn": "nightly.ci.example",
                           "keys": [service_home.keys["targets"]]})
    service = start_service(service_home, policy, "https://127.0.0.1:0",
                            audit=base / "audit.jsonl",
                            extra=("--tls-cert", str(pki.server_cert), "--tls-key",
                                   str(pki.server_key), "--client-ca", str(pki.ca)))
    yield service
    assert service.stop() == 0


def test_a_client_named_by_its_certificate_cn_signs(tls_service, pki, service_home, monkeypatch):
    for name, value in pki.env("release").items():
        monkeypatch.setenv(name, value)
    keys = {k["role"]: tuf_key(k) for k in ServiceClient(tls_service.url).keys()}
    assert set(keys) == {"timestamp", "snapshot"}
    host_port = tls_service.url[len("https://"):]
    for role in ("timestamp", "snapshot"):
        md = Metadata.from_dict({"signed": signed_of(role), "signatures": []})
        md.sign(Signer.from_priv_key_uri(f"hsmsign+https://{host_port}/{keys[role].keyid}",
                                         keys[role]))
        keys[role].verify_signature(md.signatures[keys[role].keyid], md.signed_bytes)
    status, answer = ServiceClient(tls_service.url).request(
        "POST", "/v1/sign", {"keyid": service_home.keys["targets"], "signed": signed_of("targets")})
    assert status == 403


def test_a_client_named_by_a_dns_san_signs(tls_service, pki, service_home):
    client = ServiceClient(tls_service.url, pki.env("by-san"))
    keys = client.keys()
    assert [k["keyid"] for k in keys] == [service_home.keys["targets"]]
    signed = signed_of("targets")
    sig = client.sign(service_home.keys["targets"], signed)
    md = Metadata.from_dict({"signed": signed, "signatures": []})
    from securesystemslib.signer import Signature

    tuf_key(keys[0]).verify_signature(Signature(keys[0]["keyid"], sig), md.signed_bytes)
    audit = [json.loads(line) for line in tls_service.audit.read_text().splitlines()]
    assert audit[-1]["client"] == "nightly" and "nightly.ci.example" in audit[-1]["peer"]


def test_certificates_the_policy_or_the_ca_do_not_know_get_nothing(tls_service, pki, tmp_path):
    status, answer = ServiceClient(tls_service.url, pki.env("stranger")).request("GET", "/v1/keys")
    assert status == 401 and "stranger" in answer["error"]
    with pytest.raises(RemoteError) as rogue:  # a certificate from another CA: no handshake
        ServiceClient(tls_service.url, pki.env("rogue")).keys()
    assert rogue.value.status == 0
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki.ca))  # no client certificate at all
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"{tls_service.url}/healthz", context=context, timeout=10).read()


def test_the_cli_signs_through_the_service_over_tls(tls_service, pki, service_home, tmp_path,
                                                    no_token_env):
    """`hsmsign sign` in a home with no key: the timestamp key is the service's."""
    admin = service_home.cli()
    repo = tmp_path / "repo"
    keys = service_home.keys
    admin("repo", "init", str(repo), "--root-key", keys["root"], "--targets-key", keys["targets"],
          "--snapshot-key", keys["snapshot"], "--timestamp-key", keys["timestamp"],
          "--expires", "timestamp=1", "--expires", "snapshot=1")
    env = {k: v for k, v in no_token_env.items() if not k.endswith("_PASSPHRASE")}
    pipeline = Cli(tmp_path / "pipeline",
                   {**env, "HSMSIGN_SIGNER_URL": tls_service.url, **pki.env("release")})
    out = pipeline("repo", "refresh", str(repo), "--within", "2", "--json")
    assert set(json.loads(out.stdout)["refreshed"]) == {"snapshot", "timestamp"}
    admin("repo", "verify", str(repo))
    again = pipeline("sign", str(repo), "timestamp", "--key", keys["timestamp"][:10])
    assert "already signed by the key(s) here" in again.stderr
    unset = {**env, "HSMSIGN_SIGNER_URL": tls_service.url}
    error = Cli(tmp_path / "p2", unset).fails("repo", "refresh", str(repo), "--within", "2")
    assert "HSMSIGN_SIGNER_CERT" in error.error_lines[0]
