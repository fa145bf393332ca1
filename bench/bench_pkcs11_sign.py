"""Signatures per second through hsmsign's PKCS#11 store on SoftHSM (P-256), against a bare
python-pkcs11 loop on the same token and key, and securesystemslib's HSMSigner on the same key.

    python bench/bench_pkcs11_sign.py [--n 2000] [--rounds 7] [--block 100] [--hsmsigner-n 200]

What is compared (all sign the same ~1.5 KB canonical JSON of a TUF targets role, with the
same P-256 key, generated on a temporary SoftHSM token by `Pkcs11KeyStore.generate`):

  bare python-pkcs11     one session, `key.sign(hashlib.sha256(payload).digest(), CKM_ECDSA)`:
                         raw r||s, nothing else (the floor for any Python signer)
  hsmsign TokenSigner    the public path: `TokenSigner(store, keyid).sign(payload)` with a
                         `Pkcs11KeyStore` logged in once; returns a DER-encoded TUF `Signature`
  securesystemslib       `Signer.from_priv_key_uri("hsm:<CKA_ID as int>?label=...")`: finds the
  HSMSigner              token, opens a session and logs in for every signature. It runs in a
                         process of its own (this process is already logged in, and PKCS#11
                         login state belongs to the process); only its signing loop is timed.

Each round signs `--n` times with each in-process path, interleaved in blocks of `--block`
(ABBA order, so load from other processes on the machine hits both alike), then `--hsmsigner-n`
times with HSMSigner. The table shows the median over rounds; "vs bare" is the median of the
per-round ratios. Target (issue): hsmsign >= 0.9x bare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402

TARGET = 0.9

HSMSIGNER_SCRIPT = """\
import json, sys, time
from securesystemslib.signer import Signer, SSlibKey
uri, keyid, keydict, payload, n = sys.argv[1:6]
key = SSlibKey.from_dict(keyid, json.loads(keydict))
payload = bytes.fromhex(payload)
signer = Signer.from_priv_key_uri(uri, key, lambda _secret: {pin!r})
key.verify_signature(signer.sign(payload), payload)  # the same key as hsmsign's
start = time.perf_counter()
for _ in range(int(n)):
    signer.sign(payload)
print(time.perf_counter() - start)
"""


def payload_bytes() -> bytes:
    """Canonical JSON of a small, realistic targets role (what TUF signs)."""
    from tuf.api.metadata import Metadata, TargetFile, Targets

    md = Metadata(Targets(version=42))
    for i in range(5):
        name = f"app/v1.{i}.0/app-linux-amd64.tar.gz"
        md.signed.targets[name] = TargetFile(
            10_000_000 + i,
            {"sha256": hashlib.sha256(name.encode()).hexdigest(),
             "sha512": hashlib.sha512(name.encode()).hexdigest()},
            name,
        )
    return md.signed_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="signatures per path per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block", type=int, default=100, help="signatures per interleaved block")
    parser.add_argument("--hsmsigner-n", type=int, default=200,
                        help="HSMSigner signatures per round (it logs in every time: ~2 ms each)")
    args = parser.parse_args()
    root = _softhsm.make_token()  # sets SOFTHSM2_CONF before python-pkcs11 loads the module
    try:
        run(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args) -> None:
    import pkcs11
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from pkcs11 import Mechanism, ObjectClass
    from securesystemslib.signer import Signature

    from hsmsign.config import TokenConfig
    from hsmsign.keys import ALGORITHMS
    from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
    from hsmsign.secrets import Secrets
    from hsmsign.signing import TokenSigner

    payload = payload_bytes()
    store = Pkcs11KeyStore(TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL, explicit=True),
                           Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}))
    # HSMSigner names a key by an integer whose minimal big-endian bytes are the CKA_ID:
    # hsmsign's random 16-byte CKA_ID works as long as it does not start with a zero byte.
    while True:
        record = store.generate("targets", ALGORITHMS["ecdsa-p256"])
        cka_id = store._get(record.keyid).cka_id
        if cka_id[0]:
            break
        store.remove(record.keyid)
    signer = TokenSigner(store, record.keyid)
    public = signer.public_key
    public.verify_signature(signer.sign(payload), payload)  # also logs in and prepares the key

    # The bare loop: its own session on the same token; the store's login covers it.
    session = pkcs11.lib(_softhsm.MODULE).get_token(token_label=_softhsm.LABEL).open()
    bare_key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=cka_id)
    raw = bare_key.sign(hashlib.sha256(payload).digest(), mechanism=Mechanism.ECDSA)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify_signature(Signature(public.keyid, der.hex()), payload)

    sha256, ecdsa = hashlib.sha256, Mechanism.ECDSA

    def bare(count: int) -> None:
        for _ in range(count):
            bare_key.sign(sha256(payload).digest(), mechanism=ecdsa)

    def hsmsign(count: int) -> None:
        sign = signer.sign
        for _ in range(count):
            sign(payload)

    uri = f"hsm:{int.from_bytes(cka_id, 'big')}?label={_softhsm.LABEL}"
    script = HSMSIGNER_SCRIPT.format(pin=_softhsm.PIN)

    def hsmsigner(count: int) -> float:
        out = subprocess.run(
            [sys.executable, "-c", script, uri, public.keyid, json.dumps(public.to_dict()),
             payload.hex(), str(count)],
            env={**os.environ, "PYKCS11LIB": _softhsm.MODULE}, check=True, capture_output=True,
            text=True).stdout
        return count / float(out)

    paths = {"bare python-pkcs11": bare, "hsmsign TokenSigner": hsmsign}
    rates: dict[str, list[float]] = {name: [] for name in (*paths, "securesystemslib HSMSigner")}
    ratios: dict[str, list[float]] = {name: [] for name in rates}
    cpu_rates: dict[str, list[float]] = {name: [] for name in paths}
    blocks = max(1, args.n // args.block)
    for _ in range(args.rounds):
        spent = dict.fromkeys(paths, 0.0)
        spent_cpu = dict.fromkeys(paths, 0.0)
        for i in range(blocks):
            for name in (paths if i % 2 == 0 else reversed(paths)):
                start, start_cpu = time.perf_counter(), time.thread_time()
                paths[name](args.block)
                spent[name] += time.perf_counter() - start
                spent_cpu[name] += time.thread_time() - start_cpu
        for name in paths:
            rates[name].append(blocks * args.block / spent[name])
            cpu_rates[name].append(blocks * args.block / spent_cpu[name])
        rates["securesystemslib HSMSigner"].append(hsmsigner(args.hsmsigner_n))
        for name in rates:
            ratios[name].append(rates[name][-1] / rates["bare python-pkcs11"][-1])

    print(f"P-256 on SoftHSM; payload: canonical JSON of a targets role, {len(payload)} bytes")
    print(f"machine: {_softhsm.machine()}")
    print(f"{args.rounds} rounds; per round {blocks * args.block} signatures per in-process path "
          f"(interleaved blocks of {args.block}), {args.hsmsigner_n} with HSMSigner")
    print()
    print(f"{'path':28} {'sig/s':>8} {'us/sig':>7} {'min-max sig/s':>15} {'vs bare':>8}")
    for name, values in rates.items():
        rate = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"{name:28} {rate:8.0f} {1e6 / rate:7.1f} {spread:>15} "
              f"{statistics.median(ratios[name]):7.2f}x")
    ratio = statistics.median(ratios["hsmsign TokenSigner"])
    versus = statistics.median(a / b for a, b in zip(rates["hsmsign TokenSigner"],
                                                     rates["securesystemslib HSMSigner"]))
    print()
    print(f"hsmsign / bare python-pkcs11: {ratio:.2f}x (per-round {min(ratios['hsmsign TokenSigner']):.2f}"
          f"-{max(ratios['hsmsign TokenSigner']):.2f}); target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'NOT MET'}")
    cpu_ratio = statistics.median(a / b for a, b in zip(cpu_rates["hsmsign TokenSigner"],
                                                        cpu_rates["bare python-pkcs11"]))
    print(f"the same per CPU second of this thread (insensitive to other processes' load): "
          f"{cpu_ratio:.2f}x ({statistics.median(cpu_rates['bare python-pkcs11']):.0f} vs "
          f"{statistics.median(cpu_rates['hsmsign TokenSigner']):.0f} sig/CPU-s)")
    print(f"hsmsign / securesystemslib HSMSigner: {versus:.1f}x")
    store.close()
    session.close()


if __name__ == "__main__":
    main()
