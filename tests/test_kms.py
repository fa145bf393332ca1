"""Cloud KMS keys against a real KMS API server: moto's server (tests/kms_server.py, which adds
the two behaviours of AWS KMS that moto lacks), reached by boto3 through AWS_ENDPOINT_URL.
GCP, Azure and Vault have no server here: their records, listing and clear errors are tested.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from test_repository import Server, updater

from conftest import Cli, tree_digest

HERE = Path(__file__).parent
REGION = "us-east-1"


def _start_moto(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "kms_server.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(extra_env or {})})
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError("moto's server did not start")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def _aws_env(endpoint: str) -> dict[str, str]:
    """Test credentials, and no developer AWS configuration leaking in."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def moto():
    """moto's server, once for the module; yields its endpoint."""
    proc, endpoint = _start_moto()
    try:
        yield endpoint
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def kms(moto):
    return boto3.client("kms", endpoint_url=moto, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def kms_cli(home, moto, no_token_env) -> Cli:
    env = {k: v for k, v in no_token_env.items() if not k.startswith("AWS_")}
    return Cli(home, {**env, **_aws_env(moto)})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(cli: Cli, keyid: str) -> dict:
    return json.loads((cli.home / "kms.json").read_text())["keys"][keyid]


def _aws_key_id(uri: str) -> str:
    return uri.split(":", 1)[1]


@pytest.fixture(scope="module")
def kms_repo(tmp_path_factory, moto, no_token_env):
    """Timestamp and snapshot keys made in KMS, and a repository signed with them, made once."""
    base = tmp_path_factory.mktemp("kms-repo")
    env = {k: v for k, v in no_token_env.items() if not k.startswith("AWS_")}
    cli = Cli(base / "home", {**env, **_aws_env(moto)})
    timestamp = cli("key", "generate", "timestamp", "--store", "kms", "--kms", "aws",
                    "--gun", "example.com/app").stdout.strip()
    snapshot = cli("key", "generate", "snapshot", "--store", "kms", "--gun",
                   "example.com/app").stdout.strip()
    repo = base / "repo"
    cli("repo", "init", str(repo), "--root-store", "file", "--timestamp-key", timestamp,
        "--snapshot-key", snapshot)
    return cli, repo, timestamp, snapshot


def test_kms_keys_sign_a_repository_that_python_tuf_trusts(kms_repo, kms, tmp_path):
    cli, repo, timestamp, snapshot = kms_repo
    # The records: URI, public key, role, gun; no secret; 0600.
    mode = (cli.home / "kms.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    record = _record(cli, timestamp)
    assert record["uri"].startswith("awskms:arn:aws:kms:")
    assert (record["role"], record["gun"]) == ("timestamp", "example.com/app")
    assert "PRIVATE" not in (cli.home / "kms.json").read_text()
    # In KMS: an ECC_NIST_P256 SIGN_VERIFY key, an alias naming role and gun, tags for both.
    key = kms.describe_key(KeyId=_aws_key_id(record["uri"]))["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    aliases = [a["AliasName"] for a in kms.list_aliases(KeyId=key["KeyId"])["Aliases"]]
    assert aliases == [f"alias/hsmsign/example-com/app/timestamp-{key['KeyId'][:8]}"]
    tags = {t["TagKey"]: t["TagValue"]
            for t in kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]}
    assert tags == {"hsmsign:role": "timestamp", "hsmsign:gun": "example.com/app"}

    # key list shows them without contacting the service (the endpoint here is dead).
    dead = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}"}
    listed = {k["keyid"]: k for k in json.loads(cli("key", "list", "--json", env=dead).stdout)}
    assert listed[timestamp]["store"] == "kms"
    assert listed[timestamp]["location"] == record["uri"]
    assert listed[snapshot]["role"] == "snapshot"

    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"release 1")
    cli("target", "add", str(repo), "app/v1.tar.gz", "--file", str(artefact))
    cli("repo", "refresh", str(repo), "--within", "400")
    timestamp_md = json.loads((repo / "metadata" / "timestamp.json").read_text())
    assert [s["keyid"] for s in timestamp_md["signatures"]] == [timestamp]

    server = Server(repo)
    try:
        client = updater(repo, server, tmp_path / "client")
        client.refresh()
        info = client.get_targetinfo("app/v1.tar.gz")
    finally:
        server.close()
    assert info is not None and info.length == len(b"release 1")
    assert client._trusted_set.timestamp.version == timestamp_md["signed"]["version"]


def test_add_uri_records_an_existing_key_and_remove_schedules_its_deletion(kms_cli, kms):
    created = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    kms.create_alias(AliasName="alias/ci-targets", TargetKeyId=created["KeyId"])
    keyid = kms_cli("key", "add-uri", "awskms:alias/ci-targets", "--role", "targets",
                    "--gun", "example.com/ci").stdout.strip()
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    from hsmsign.keys import key_id

    der = kms.get_public_key(KeyId=created["KeyId"])["PublicKey"]
    assert keyid == key_id(load_der_public_key(der))  # the same TUF key ID as anywhere
    assert _record(kms_cli, keyid)["uri"] == "awskms:alias/ci-targets"

    before = tree_digest(kms_cli.home)
    again = kms_cli.fails("key", "add-uri", "awskms:alias/ci-targets", "--role", "targets")
    assert "already recorded" in again.error_lines[0]
    assert tree_digest(kms_cli.home) == before

    kms_cli("key", "remove", keyid, "--schedule-deletion", "7", "--force")
    assert keyid not in json.loads((kms_cli.home / "kms.json").read_text())["keys"]
    state = kms.describe_key(KeyId=created["KeyId"])["KeyMetadata"]["KeyState"]
    assert state == "PendingDeletion"


def _signing_setup(cli: Cli, kms, tmp_path: Path, alias: str) -> tuple[str, Path, str]:
    """A repository whose timestamp key is recorded by an alias (that the test may move)."""
    created = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=created["KeyId"])
    timestamp = cli("key", "add-uri", f"awskms:{alias}", "--role", "timestamp").stdout.strip()
    repo = tmp_path / "repo"
    cli("repo", "init", str(repo), "--root-store", "file", "--timestamp-key", timestamp)
    return created["KeyId"], repo, timestamp


def test_each_kms_failure_is_one_error_and_nothing_is_written(kms_cli, kms, moto, tmp_path):
    aws_key, repo, timestamp = _signing_setup(kms_cli, kms, tmp_path, "alias/failures")
    before = (tree_digest(repo), tree_digest(kms_cli.home))
    refresh = ("repo", "refresh", str(repo), "--role", "timestamp", "--within", "400")

    def fails(*needles: str, env: dict | None = None, args=refresh) -> None:
        failed = kms_cli.fails(*args, env=env)
        for needle in needles:
            assert needle in failed.error_lines[0], failed.stderr
        assert (tree_digest(repo), tree_digest(kms_cli.home)) == before

    # The endpoint does not answer.
    dead = f"http://127.0.0.1:{_closed_port()}"
    fails("cannot reach AWS KMS", dead, env={"AWS_ENDPOINT_URL": dead, "AWS_MAX_ATTEMPTS": "1"})
    # No credentials at all.
    fails("no AWS credentials", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    # Credentials refused: a second moto server with moto's own IAM authentication on and no
    # IAM user at all, so that it refuses every access key.
    strict, strict_endpoint = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        fails("refused the credentials", env={"AWS_ENDPOINT_URL": strict_endpoint})
    finally:
        strict.kill()
        strict.wait()
    # The key is disabled in KMS, then pending deletion.
    kms.disable_key(KeyId=aws_key)
    fails("is disabled in AWS KMS")
    kms.enable_key(KeyId=aws_key)
    kms.schedule_key_deletion(KeyId=aws_key, PendingWindowInDays=7)
    fails("pending deletion")
    kms.cancel_key_deletion(KeyId=aws_key)
    kms.enable_key(KeyId=aws_key)
    # The alias now names another key: its public key no longer matches the record.
    other = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    kms.update_alias(AliasName="alias/failures", TargetKeyId=other["KeyId"])
    fails("no longer the one recorded", timestamp[:7])
    # The alias is gone (the key deleted, as far as the URI can tell).
    kms.delete_alias(AliasName="alias/failures")
    fails("does not exist in AWS KMS")
    # Back as it was: the same command works.
    kms.create_alias(AliasName="alias/failures", TargetKeyId=aws_key)
    kms_cli(*refresh)
    assert tree_digest(repo) != before[0]


def test_without_the_extra_a_kms_command_names_it(kms_cli, tmp_path):
    """boto3 not importable, as on an install without hsmsign[kms]."""
    shadow = tmp_path / "no-boto3"
    shadow.mkdir()
    (shadow / "boto3.py").write_text("raise ImportError('No module named boto3')\n")
    env = {"PYTHONPATH": str(shadow)}
    before = tree_digest(kms_cli.home)
    failed = kms_cli.fails("key", "generate", "timestamp", "--store", "kms", env=env)
    assert "pip install 'hsmsign[kms]'" in failed.error_lines[0]
    failed = kms_cli.fails("key", "add-uri", "awskms:alias/x", "--role", "targets", env=env)
    assert "pip install 'hsmsign[kms]'" in failed.error_lines[0]
    assert tree_digest(kms_cli.home) == before


def test_gcp_azure_and_vault_records_listing_and_clear_errors(kms_cli, tmp_path):
    """No GCP, Azure or Vault server exists here: records from a given public key, listing,
    and the clear error when the service cannot be reached or its library is missing."""
    from hsmsign.keys import ALGORITHMS, generate_private_key, public_key_pem

    uris = {"gcpkms": "gcpkms:projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
            "azurekms": "azurekms://vault.vault.azure.net/keys/targets/0123456789abcdef",
            "hv": "hv:targets/1"}
    keyids = {}
    for scheme, uri in uris.items():
        pem = tmp_path / f"{scheme}.pub"
        pem.write_bytes(public_key_pem(generate_private_key(ALGORITHMS["ecdsa-p256"]).public_key()))
        keyids[scheme] = kms_cli("key", "add-uri", uri, "--role", "targets",
                                 "--public-key", str(pem)).stdout.strip()
    listed = {k["keyid"]: k for k in json.loads(kms_cli("key", "list", "--json").stdout)}
    for scheme, uri in uris.items():
        assert (listed[keyids[scheme]]["store"], listed[keyids[scheme]]["location"]) == ("kms", uri)

    before = tree_digest(kms_cli.home)
    unsupported = kms_cli.fails("key", "add-uri", "gpg:abc", "--role", "targets")
    assert "not a KMS key URI" in unsupported.error_lines[0]
    vault = {"VAULT_ADDR": f"http://127.0.0.1:{_closed_port()}", "VAULT_TOKEN": "t"}
    failed = kms_cli.fails("key", "add-uri", "hv:releases", "--role", "releases", env=vault)
    assert "cannot reach HashiCorp Vault" in failed.error_lines[0]
    assert tree_digest(kms_cli.home) == before

    # Signing with the Vault key when Vault cannot be reached: python-tuf's Metadata signed in
    # a subprocess through the hsmsign: URI.
    script = (
        "from securesystemslib.signer import Signer\n"
        "from tuf.api.metadata import Metadata, Targets\n"
        "import hsmsign.signing, json, sys\n"
        f"from hsmsign.keys import load_public_key_pem, tuf_key\n"
        f"pem = open({str(tmp_path / 'hv.pub')!r}, 'rb').read()\n"
        "signer = Signer.from_priv_key_uri(sys.argv[1], tuf_key(load_public_key_pem(pem)))\n"
        "try:\n    Metadata(Targets()).sign(signer)\n"
        "except Exception as e:\n    cause = e.__cause__ or e\n"
        "    print(type(cause).__name__, cause)\n")
    out = subprocess.run([sys.executable, "-c", script, f"hsmsign:{keyids['hv']}"],
                         capture_output=True, text=True, timeout=60,
                         env={**kms_cli.env, **vault, "HSMSIGN_HOME": str(kms_cli.home)})
    assert out.stdout.startswith("KmsUnreachable cannot reach HashiCorp Vault"), out
