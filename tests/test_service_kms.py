"""The signing service serves keys of every store: a cloud KMS key (moto's KMS server, as in
test_kms.py) signs through `hsmsign serve`, and a KMS that stops answering is a 503."""

from __future__ import annotations

import os

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata

from conftest import Cli
from service_harness import ServiceHome, signed_of, start_service, tuf_key, write_policy
from test_kms import _aws_env, _start_moto

import hsmsign.service.client  # noqa: F401 - registers hsmsign+unix:
from hsmsign.service.client import ServiceClient


def test_a_kms_key_signs_through_the_service(tmp_path, no_token_env):
    proc, endpoint = _start_moto()
    try:
        env = {**{k: v for k, v in no_token_env.items() if not k.startswith("AWS_")},
               **_aws_env(endpoint)}
        cli = Cli(tmp_path / "home", env)
        keyid = cli("key", "generate", "timestamp", "--store", "kms", "--kms", "aws").stdout.strip()
        policy = write_policy(tmp_path / "policy.toml",
                              {"name": "ci", "uid": os.getuid(), "roles": ["timestamp"]})
        home = ServiceHome(tmp_path, tmp_path / "home", env, {"timestamp": keyid})
        service = start_service(home, policy, f"unix:{tmp_path / 'sock'}",
                                audit=tmp_path / "audit.jsonl")
        try:
            client = ServiceClient(service.url)
            [entry] = client.keys()
            key = tuf_key(entry)
            assert key.keyid == keyid
            md = Metadata.from_dict({"signed": signed_of("timestamp"), "signatures": []})
            md.sign(Signer.from_priv_key_uri(f"hsmsign+unix:{service.url[5:]}#{keyid}", key))
            key.verify_signature(md.signatures[keyid], md.signed_bytes)
            proc.kill()
            proc.wait()
            status, answer = client.request("POST", "/v1/sign",
                                            {"keyid": keyid, "signed": signed_of("timestamp")})
            assert status == 503 and "kms" in answer["error"]
        finally:
            assert service.stop() == 0
    finally:
        proc.kill()
        proc.wait()
