"""`hsmsign serve` over a Unix socket: the API, the policy, the audit log, and a pipeline that
holds no key signing through it (checked with python-tuf's client)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata

from conftest import Cli, tree_digest
from service_harness import (
    raw_request,
    service_home,  # noqa: F401 - a fixture
    signed_of,
    start_service,
    tuf_key,
    write_policy,
)

import hsmsign.service.client  # noqa: F401 - registers the hsmsign+unix: and hsmsign+https: schemes
from hsmsign.service.client import ServiceClient

OTHER_GID = 54321  # a group no test process is in


@pytest.fixture(scope="module")
def running(service_home, tmp_path_factory):
    """One service for the API tests: this uid may sign timestamp and targets (7 days at
    most); the snapshot key is another client's."""
    base = tmp_path_factory.mktemp("running")
    policy = write_policy(base / "policy.toml",
                          {"name": "ci", "uid": os.getuid(), "roles": ["timestamp"],
                           "keys": [service_home.keys["targets"]], "max_expires_days": 7},
                          {"name": "other", "gid": OTHER_GID, "roles": ["snapshot"]})
    service = start_service(service_home, policy, f"unix:{base / 'sock'}",
                            audit=base / "audit.jsonl")
    yield service
    assert service.stop() == 0


@pytest.fixture
def client(running) -> ServiceClient:
    c = ServiceClient(running.url)
    yield c
    c.close_connection()


def test_signs_through_the_signer_uri_and_python_tuf_verifies(running, client, service_home):
    keys = {k["role"]: tuf_key(k) for k in client.keys()}
    assert set(keys) == {"timestamp", "targets"}  # only this client's keys, not snapshot's
    for role in ("timestamp", "targets"):  # a token key and a file key
        key = keys[role]
        md = Metadata.from_dict({"signed": signed_of(role), "signatures": []})
        signer = Signer.from_priv_key_uri(f"hsmsign+unix:{running.url[5:]}#{key.keyid}", key)
        md.sign(signer)
        key.verify_signature(md.signatures[key.keyid], md.signed_bytes)
        assert key.keyid == service_home.keys[role]


def test_the_keys_answer_names_role_gun_and_public_key(client, service_home):
    entry = next(k for k in client.keys() if k["role"] == "timestamp")
    assert entry["keyid"] == service_home.keys["timestamp"]
    assert entry["gun"] is None
    assert "BEGIN PUBLIC KEY" in entry["public_key"]["keyval"]["public"]


@pytest.mark.parametrize("keyid_role, signed, status, words", [
    ("snapshot", signed_of("snapshot"), 403, "not granted"),
    ("timestamp", signed_of("snapshot"), 400, "signs timestamp metadata; this is snapshot"),
    ("timestamp", {"_type": "anything", "data": "a blob"}, 400, "is not TUF metadata"),
    ("timestamp", {"_type": "timestamp", "version": 1}, 400, "not valid timestamp metadata"),
    ("timestamp", signed_of("timestamp", days=30), 400, "later than ci's limit of 7 days"),
    ("timestamp", signed_of("timestamp", days=-1), 400, "expired"),
    ("timestamp", "a string", 400, "must be the JSON object"),
])
def test_refuses_what_is_not_granted_or_not_acceptable(client, service_home, keyid_role, signed,
                                                       status, words):
    got, answer = client.request("POST", "/v1/sign",
                                 {"keyid": service_home.keys[keyid_role], "signed": signed})
    assert got == status
    assert words in answer["error"]


def test_unknown_key_malformed_json_and_big_bodies(running, service_home):
    assert raw_request(running.url, "POST", "/v1/sign",
                       json.dumps({"keyid": "ab" * 32, "signed": {}}).encode())[0] == 404
    status, answer = raw_request(running.url, "POST", "/v1/sign", b"{not json")
    assert status == 400 and "not JSON" in answer["error"]
    status, answer = raw_request(running.url, "POST", "/v1/sign", b'{"signed": {}}')
    assert status == 400 and '"keyid"' in answer["error"]
    status, answer = raw_request(running.url, "POST", "/v1/sign", b"[1, 2]")
    assert status == 400
    big = b'{"keyid": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    status, answer = raw_request(running.url, "POST", "/v1/sign", big)
    assert status == 413 and "10 MiB" in answer["error"]
    status, answer = raw_request(running.url, "GET", "/v1/nothing")
    assert status == 404 and "error" in answer


def test_a_peer_the_policy_does_not_name_is_401(service_home, tmp_path):
    policy = write_policy(tmp_path / "policy.toml",
                          {"name": "other", "gid": OTHER_GID, "roles": ["snapshot"]})
    service = start_service(service_home, policy, f"unix:{tmp_path / 'sock'}",
                            audit=tmp_path / "audit.jsonl")
    try:
        status, answer = raw_request(service.url, "GET", "/v1/keys")
        assert status == 401
        assert f"uid {os.getuid()}" in answer["error"]
        status, answer = raw_request(service.url, "POST", "/v1/sign", json.dumps(
            {"keyid": service_home.keys["snapshot"], "signed": signed_of("snapshot")}).encode())
        assert status == 401
    finally:
        assert service.stop() == 0
    last = json.loads(service.audit.read_text().splitlines()[-2])
    assert last["result"] == "unauthenticated" and last["keyid"] is None


def test_health_readiness_and_metrics(running, client, service_home):
    assert client.call("GET", "/healthz") == {"status": "ok"}
    ready = client.call("GET", "/readyz")
    assert ready["stores"] == {"file": "ok", "token": "ok"}
    client.sign(service_home.keys["timestamp"], signed_of("timestamp"))
    client.request("POST", "/v1/sign", {"keyid": service_home.keys["snapshot"],
                                        "signed": signed_of("snapshot")})
    text = raw_metrics(running.url)
    keyid = service_home.keys["timestamp"]
    assert f'hsmsign_signatures_total{{client="ci",keyid="{keyid}"}}' in text
    assert 'hsmsign_refusals_total{client="ci",reason="not_granted"}' in text
    assert "hsmsign_sign_seconds_bucket" in text
    assert 'hsmsign_store_up{store="token"} 1.0' in text


def raw_metrics(url: str) -> str:
    from hsmsign.service.client import _UnixConnection

    conn = _UnixConnection(url[5:], 30)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain")
    text = response.read().decode()
    conn.close()
    return text


def test_every_request_is_in_the_chained_audit_log(running, client, service_home, tmp_path):
    signed = signed_of("timestamp")
    client.sign(service_home.keys["timestamp"], signed)
    client.request("POST", "/v1/sign", {"keyid": service_home.keys["snapshot"],
                                        "signed": signed_of("snapshot")})
    lines = [json.loads(line) for line in running.audit.read_text().splitlines()]
    signed_line, refused_line = lines[-2], lines[-1]
    md = Metadata.from_dict({"signed": signed, "signatures": []})
    import hashlib

    assert signed_line["result"] == "signed" and signed_line["client"] == "ci"
    assert signed_line["role"] == "timestamp" and signed_line["version"] == 1
    assert signed_line["sha256"] == hashlib.sha256(md.signed_bytes).hexdigest()
    assert refused_line["result"] == "not_granted" and refused_line["prev"] == signed_line["hash"]
    assert (os.stat(running.audit).st_mode & 0o777) == 0o600

    cli = Cli(tmp_path / "nohome", {})
    out = cli("serve", "verify-log", str(running.audit), "--json")
    assert json.loads(out.stdout)["entries"] == len(lines)
    copy = tmp_path / "copy.jsonl"
    edited = running.audit.read_text().splitlines()
    edited[2] = edited[2].replace('"result":"signed"', '"result":"refused"', 1)
    if edited[2] == running.audit.read_text().splitlines()[2]:
        edited[2] = edited[2].replace('"request":"', '"request":"x', 1)
    copy.write_text("\n".join(edited) + "\n")
    error = cli.fails("serve", "verify-log", str(copy)).error_lines[0]
    assert "breaks at line 3" in error


def test_versions_must_be_newer_than_the_published_ones(service_home, tmp_path):
    repo = tmp_path / "repo"
    (repo / "metadata").mkdir(parents=True)
    published = Metadata.from_dict({"signed": signed_of("timestamp", version=5), "signatures": []})
    published.to_file(str(repo / "metadata" / "timestamp.json"))
    policy = write_policy(tmp_path / "policy.toml",
                          {"name": "ci", "uid": os.getuid(), "roles": ["timestamp"],
                           "repository": repo})
    service = start_service(service_home, policy, f"unix:{tmp_path / 'sock'}",
                            audit=tmp_path / "audit.jsonl")
    try:
        client = ServiceClient(service.url)
        keyid = service_home.keys["timestamp"]
        status, answer = client.request("POST", "/v1/sign",
                                        {"keyid": keyid, "signed": signed_of("timestamp", version=4)})
        assert status == 400 and "not newer than the published version 5" in answer["error"]
        client.sign(keyid, published.signed.to_dict())  # the published one again: allowed
        client.sign(keyid, signed_of("timestamp", version=6))
    finally:
        assert service.stop() == 0


@pytest.mark.parametrize("client_table, words", [
    ({"name": "ci", "uid": 0, "roles": ["timestamp"], "colour": "blue"}, "unknown field 'colour'"),
    ({"name": "ci", "uid": 0, "keys": ["ab" * 32]}, f"granted key {'ab' * 32}"),
    ({"name": "ci", "roles": ["timestamp"]}, "say who the client is"),
    ({"name": "ci", "uid": "0", "roles": ["timestamp"]}, "uid must be an integer"),
])
def test_a_bad_policy_stops_the_start_naming_what(service_home, tmp_path, client_table, words):
    policy = write_policy(tmp_path / "policy.toml", client_table)
    cli = service_home.cli()
    before = tree_digest(service_home.home)
    error = cli.fails("serve", "--listen", f"unix:{tmp_path / 'sock'}", "--policy", str(policy),
                      "--audit-log", str(tmp_path / "audit.jsonl")).error_lines[0]
    assert words in error and str(policy) in error
    assert not (tmp_path / "sock").exists()
    assert tree_digest(service_home.home) == before


def test_a_pipeline_holding_no_key_signs_through_the_service(service_home, tmp_path,
                                                             no_token_env):
    """The admin makes the repository with the service's home; a pipeline with an empty home
    and HSMSIGN_SIGNER_URL adds a target and refreshes; python-tuf's Updater trusts it."""
    from test_repository import Server, updater

    admin = service_home.cli()
    repo = tmp_path / "repo"
    keys = service_home.keys
    admin("repo", "init", str(repo), "--root-key", keys["root"], "--targets-key", keys["targets"],
          "--snapshot-key", keys["snapshot"], "--timestamp-key", keys["timestamp"])
    policy = write_policy(tmp_path / "policy.toml",
                          {"name": "pipeline", "uid": os.getuid(),
                           "roles": ["targets", "snapshot", "timestamp"], "repository": repo})
    service = start_service(service_home, policy, f"unix:{tmp_path / 'sock'}",
                            audit=tmp_path / "audit.jsonl")
    try:
        pipeline_home = tmp_path / "pipeline"
        env = {k: v for k, v in no_token_env.items() if not k.endswith("_PASSPHRASE")}
        pipeline = Cli(pipeline_home, {**env, "HSMSIGN_SIGNER_URL": service.url})
        assert json.loads(pipeline("key", "list", "--json").stdout) == []
        artifact = tmp_path / "app.tar.gz"
        artifact.write_bytes(b"release 1\n" * 100)
        pipeline("target", "add", str(repo), "app/app.tar.gz", "--file", str(artifact))
        pipeline("repo", "refresh", str(repo), "--within", "400")
        pipeline("sign", str(repo), "timestamp")
        assert not (pipeline_home / "private").exists()
        server = Server(repo)
        try:
            up = updater(repo, server, tmp_path / "client")
            up.refresh()
            info = up.get_targetinfo("app/app.tar.gz")
            assert info is not None and info.length == artifact.stat().st_size
        finally:
            server.close()
        signed = [json.loads(line) for line in service.audit.read_text().splitlines()]
        assert {e["role"] for e in signed if e.get("result") == "signed"} == {
            "targets", "snapshot", "timestamp"}
        # A pipeline the service does not grant root cannot sign root through it.
        before = tree_digest(repo)
        assert "no key of root is here" in pipeline("sign", str(repo), "root").stderr
        assert tree_digest(repo) == before
    finally:
        assert service.stop() == 0


def test_numbers_with_fractions_are_refused(running, service_home):
    body = ('{"keyid": "%s", "signed": {"_type": "timestamp", "version": 1.5}}'
            % service_home.keys["timestamp"]).encode()
    status, answer = raw_request(running.url, "POST", "/v1/sign", body)
    assert status == 400 and "fraction" in answer["error"]
