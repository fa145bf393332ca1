"""Repository speed, each against a bare python-tuf baseline measured in the same run.

1. `hsmsign target add REPO --from-manifest` of 100,000 targets (sign + write, then snapshot and
   timestamp) against a bare python-tuf script that builds the same Targets, signs it with a
   file key (CryptoSigner) and writes it: wall time and peak RSS, both as whole processes.
   Target: at most 1.3x time and memory.
2. Signing 1,000 prepared Metadata objects through hsmsign's SigningService with a SoftHSM
   P-256 key, against a bare loop (python-tuf's canonical serializer + python-pkcs11, one
   session). Target: at least 0.8x. securesystemslib's HSMSigner (a login per signature) is
   reported from its own process.

    python bench/bench_repository.py [N_TARGETS] [N_METADATA]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402

PASS = {"HSMSIGN_TARGETS_PASSPHRASE": "bench targets", "HSMSIGN_SNAPSHOT_PASSPHRASE": "bench snapshot",
        "HSMSIGN_TIMESTAMP_PASSPHRASE": "bench timestamp", "HSMSIGN_ROOT_PASSPHRASE": "bench root"}

BARE_SCRIPT = r'''
import json, sys
from datetime import datetime, timedelta, timezone
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets, TargetFile
from tuf.api.serialization.json import JSONSerializer
manifest = json.loads(open(sys.argv[1]).read())
md = Metadata(Targets(expires=datetime.now(timezone.utc) + timedelta(days=90)))
for path, entry in manifest.items():
    md.signed.targets[path] = TargetFile(entry["length"], entry["hashes"], path)
md.sign(CryptoSigner(ec.generate_private_key(ec.SECP256R1())))
open(sys.argv[2], "wb").write(md.to_bytes(JSONSerializer()))
'''


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process, from GNU time."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *argv], env=env, check=True,
                         capture_output=True, text=True).stderr.strip().splitlines()[-1]
    seconds, rss = out.split()
    return float(seconds), int(rss)


def manifest_bench(work: Path, n_targets: int, rounds: int) -> None:
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({
        f"pkg/file-{i}.tar.gz": {"length": i + 1,
                                 "hashes": {"sha256": hashlib.sha256(str(i).encode()).hexdigest()}}
        for i in range(n_targets)}))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("HSMSIGN_", "SOFTHSM2"))}
    (work / "t").mkdir()
    (work / "c").write_text(f"directories.tokendir = {work / 't'}\n")
    env = {**base_env, **PASS, "SOFTHSM2_CONF": str(work / "c")}
    hsmsign = [sys.executable, "-m", "hsmsign", "--home", str(work / "home")]
    subprocess.run([*hsmsign, "repo", "init", str(work / "prepared")], env=env, check=True,
                   capture_output=True)
    results = {"bare python-tuf": [], "hsmsign target add": []}
    for _ in range(rounds):
        results["bare python-tuf"].append(
            timed([sys.executable, "-c", BARE_SCRIPT, str(manifest), str(work / "bare.json")], base_env))
        shutil.rmtree(work / "repo", ignore_errors=True)
        shutil.copytree(work / "prepared", work / "repo")
        results["hsmsign target add"].append(
            timed([*hsmsign, "target", "add", str(work / "repo"), "--from-manifest", str(manifest)], env))
    bare_t = statistics.median(t for t, _ in results["bare python-tuf"])
    bare_m = statistics.median(m for _, m in results["bare python-tuf"])
    print(f"\n1. {n_targets:,} targets from a manifest, sign, write ({rounds} rounds, median)")
    print(f"{'':24} {'seconds':>8} {'vs bare':>8} {'peak MiB':>9} {'vs bare':>8}")
    for name, values in results.items():
        t = statistics.median(v for v, _ in values)
        m = statistics.median(v for _, v in values)
        print(f"{name:24} {t:8.2f} {t / bare_t:7.2f}x {m / 1024:9.0f} {m / bare_m:7.2f}x")


def service_bench(n: int, rounds: int) -> None:
    import pkcs11
    from pkcs11 import Mechanism, ObjectClass
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from securesystemslib.signer import Signature
    from tuf.api.metadata import Metadata, Targets, TargetFile
    from tuf.api.serialization.json import CanonicalJSONSerializer

    from hsmsign.config import TokenConfig
    from hsmsign.keys import ALGORITHMS, tuf_key
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets
    from hsmsign.signing import SigningService

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-service-"))
    stores = KeyStores(work / "home", Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}),
                       TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL, explicit=True))
    record = stores.token.generate("targets", ALGORITHMS["ecdsa-p256"])
    key = tuf_key(stores.token.public_key(record.keyid))
    keys = {key.keyid: key}
    service = SigningService(stores)

    def prepared() -> list[Metadata]:
        out = []
        for i in range(n):
            md = Metadata(Targets(version=i + 1))
            for j in range(5):
                md.signed.targets[f"app/{i}/{j}"] = TargetFile(j, {"sha256": "cd" * 32}, f"app/{i}/{j}")
            out.append(md)
        return out

    stores.token.login()
    session = pkcs11.lib(_softhsm.MODULE).get_token(token_label=_softhsm.LABEL).open()
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY,
                              id=stores.token._get(record.keyid).cka_id)
    serializer = CanonicalJSONSerializer()

    def bare(mds):
        for md in mds:
            data = serializer.serialize(md.signed)
            raw = private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            md.signatures[key.keyid] = Signature(key.keyid, raw.hex())

    def bare_checked(mds):
        for md in mds:
            data = serializer.serialize(md.signed)
            raw = private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            half = len(raw) // 2
            sig = Signature(key.keyid, encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                                            int.from_bytes(raw[half:], "big")).hex())
            key.verify_signature(sig, data)
            md.signatures[key.keyid] = sig

    def hsmsign(mds):
        service.sign_many((md, "targets", keys, 1) for md in mds)

    check = prepared()[:1]
    hsmsign(check)
    key.verify_signature(check[0].signatures[key.keyid], check[0].signed_bytes)
    rates = {"bare canonical + python-pkcs11": [], "bare + verify each signature": [],
             "hsmsign SigningService": []}
    for _ in range(rounds):
        for name, loop in (("bare canonical + python-pkcs11", bare),
                           ("bare + verify each signature", bare_checked),
                           ("hsmsign SigningService", hsmsign)):
            mds = prepared()
            start = time.perf_counter()
            loop(mds)
            rates[name].append(n / (time.perf_counter() - start))
    base = statistics.median(rates["bare canonical + python-pkcs11"])
    print(f"\n2. signing {n:,} prepared Metadata objects, P-256 on SoftHSM ({rounds} rounds, median)")
    print(f"{'':32} {'per s':>8} {'vs bare':>8}")
    for name, values in rates.items():
        print(f"{name:32} {statistics.median(values):8.0f} {statistics.median(values) / base:7.2f}x")
    print("(securesystemslib HSMSigner, which logs in per signature: see bench_pkcs11_sign.py, "
          "~0.05x of bare)")
    stores.close()
    session.close()
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    n_targets = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    n_metadata = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-repo-"))
    token_root = _softhsm.make_token()
    try:
        manifest_bench(work, n_targets, rounds=3)
        service_bench(n_metadata, rounds=5)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(token_root, ignore_errors=True)


if __name__ == "__main__":
    main()
