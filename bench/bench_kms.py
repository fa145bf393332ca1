"""A timestamp + snapshot refresh signed with AWS KMS keys: through hsmsign's KMS store, against
securesystemslib's AWSSigner alone, in the same run, against moto's KMS API server on loopback.

    python bench/bench_kms.py [--n 30] [--rounds 5]

Setup (not timed): moto's server (tests/kms_server.py, which adds the DIGEST signing moto
lacks), timestamp and snapshot keys made with `hsmsign key generate --store kms`, and a
repository made with `hsmsign repo init` (root and targets in files).

What is timed, `--n` refreshes each, interleaved round by round:

  hsmsign KMS store   in one process: `HsmsignRepository.refresh(["snapshot", "timestamp"])`
                      with a `SigningService` over `KeyStores` (the KMS store's one boto3 client
                      and one AWSSigner per key, made on first use): new versions of snapshot
                      and timestamp, signed, checked, written atomically with the repository's
                      own checks
  AWSSigner alone     python-tuf's Metadata API on a copy of the same repository: snapshot
                      and timestamp read, version and expiry bumped, timestamp's snapshot meta
                      updated, each signed with `Signer.from_priv_key_uri("awskms:...")` (made
                      once per key, as the store does), written with `Metadata.to_file`

Both make the same two KMS Sign calls per refresh over HTTP to the same server; the rest is
what each adds around them. Prints the median over rounds and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402

PASSPHRASE = "bench passphrase, not a secret"


def start_moto() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "kms_server.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}"


def hsmsign(home: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hsmsign", "--home", str(home), *args],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def setup(base: Path) -> tuple[Path, Path, dict[str, str]]:
    home, repo = base / "home", base / "repo"
    timestamp = hsmsign(home, "key", "generate", "timestamp", "--store", "kms", "--kms", "aws")
    snapshot = hsmsign(home, "key", "generate", "snapshot", "--store", "kms")
    hsmsign(home, "repo", "init", str(repo), "--root-store", "file", "--timestamp-key",
            timestamp, "--snapshot-key", snapshot)
    records = json.loads((home / "kms.json").read_text())["keys"]
    return home, repo, {records[k]["role"]: k for k in (timestamp, snapshot)} | {
        "uris": {k: records[k]["uri"] for k in (timestamp, snapshot)}}


def hsmsign_refresher(home: Path, repo: Path):
    from hsmsign.config import load_token_config
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.repository import HsmsignRepository
    from hsmsign.secrets import Secrets
    from hsmsign.signing import SigningService

    stores = KeyStores(home, Secrets(environ={}), load_token_config(home))
    service = SigningService(stores)

    def refresh() -> None:
        refreshed, _ = HsmsignRepository(repo, service).refresh(["snapshot", "timestamp"], 1000)
        assert refreshed == ["snapshot", "timestamp"], refreshed
    return refresh


def awssigner_refresher(repo: Path, keys: dict):
    from securesystemslib.signer import Signer
    from tuf.api.metadata import Metadata

    metadata = repo / "metadata"
    root = Metadata.from_file(str(sorted(metadata.glob("*.root.json"))[-1]))
    signers = {}
    for role in ("snapshot", "timestamp"):
        keyid = keys[role]
        signers[role] = Signer.from_priv_key_uri(keys["uris"][keyid],
                                                 root.signed.get_key(keyid))

    def refresh() -> None:
        timestamp = Metadata.from_file(str(metadata / "timestamp.json"))
        version = timestamp.signed.snapshot_meta.version
        snapshot = Metadata.from_file(str(metadata / f"{version}.snapshot.json"))
        expires = datetime.now(timezone.utc).replace(microsecond=0)
        snapshot.signed.version += 1
        snapshot.signed.expires = expires + timedelta(days=7)
        snapshot.signatures.clear()
        snapshot.sign(signers["snapshot"])
        snapshot.to_file(str(metadata / f"{snapshot.signed.version}.snapshot.json"))
        timestamp.signed.snapshot_meta.version = snapshot.signed.version
        timestamp.signed.version += 1
        timestamp.signed.expires = expires + timedelta(days=1)
        timestamp.signatures.clear()
        timestamp.sign(signers["timestamp"])
        timestamp.to_file(str(metadata / "timestamp.json"))
    return refresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="refreshes per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hsmsign-bench-kms-"))
    proc, endpoint = start_moto()
    try:
        os.environ.update({
            "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "SOFTHSM2_CONF": os.devnull,
            **{f"HSMSIGN_{r}_PASSPHRASE": PASSPHRASE for r in ("ROOT", "TARGETS")}})
        home, repo, keys = setup(base)
        plain = base / "plain"
        shutil.copytree(repo, plain)
        paths = {"hsmsign KMS store": hsmsign_refresher(home, repo),
                 "AWSSigner alone": awssigner_refresher(plain, keys)}
        for refresh in paths.values():  # warm up: clients, connections, imports
            refresh()
        times: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.rounds):
            order = list(paths) if r % 2 == 0 else list(reversed(paths))
            for name in order:
                start = time.perf_counter()
                for _ in range(args.n):
                    paths[name]()
                times[name].append((time.perf_counter() - start) / args.n)
        print(_softhsm.machine())
        print(f"moto KMS server on loopback; {args.n} refreshes x {args.rounds} rounds "
              "(median of rounds)")
        base_ms = statistics.median(times["AWSSigner alone"]) * 1000
        print(f"{'path':<20} {'ms per refresh':>15} {'vs AWSSigner':>13}")
        for name, values in times.items():
            ms = statistics.median(values) * 1000
            print(f"{name:<20} {ms:>15.1f} {ms / base_ms:>12.2f}x")
        ratios = [a / b for a, b in zip(times["hsmsign KMS store"], times["AWSSigner alone"])]
        print(f"per-round ratios {min(ratios):.2f}-{max(ratios):.2f}, "
              f"median {statistics.median(ratios):.2f}x")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
