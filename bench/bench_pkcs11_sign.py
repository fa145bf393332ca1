"""Signatures per second through hsmsign's PKCS#11 store on SoftHSM (P-256), against a bare
python-pkcs11 loop on the same token and key (one session, CKM_ECDSA + hashlib), and
securesystemslib's HSMSigner (which logs in for every signature). Target: hsmsign >= 0.9x bare.

    python bench/bench_pkcs11_sign.py [N]
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402


def main(n: int = 2000, rounds: int = 5) -> None:
    root = _softhsm.make_token()
    try:
        run(n, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(n: int, rounds: int) -> None:
    import os

    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters
    from tuf.api.metadata import Metadata, Targets, TargetFile

    from hsmsign.config import TokenConfig
    from hsmsign.keys import ALGORITHMS, tuf_key
    from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
    from hsmsign.secrets import Secrets
    from hsmsign.signing import TokenSigner

    # A realistic payload: a small targets role in canonical JSON (~1.5 KB).
    md = Metadata(Targets())
    for i in range(8):
        md.signed.targets[f"app/v{i}.tar.gz"] = TargetFile(1000 + i, {"sha256": "ab" * 32}, f"app/v{i}.tar.gz")
    payload = md.signed_bytes

    store = Pkcs11KeyStore(TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL),
                           Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}))
    record = store.generate("bench", ALGORITHMS["ecdsa-p256"])
    signer = TokenSigner(store, record.keyid)
    cka_id = store._get(record.keyid).cka_id

    lib = pkcs11.lib(_softhsm.MODULE)
    # PKCS#11 login state belongs to the application: the store's login covers this session.
    store.login()
    session = lib.get_token(token_label=_softhsm.LABEL).open()
    bare_key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=cka_id)

    # HSMSigner addresses keys by a small integer CKA_ID: a key of its own, same token.
    session_rw = lib.get_token(token_label=_softhsm.LABEL).open(rw=True)
    hsm_id = b"\x02"
    session_rw.generate_keypair(
        KeyType.EC, store=True, mechanism=Mechanism.EC_KEY_PAIR_GEN,
        public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
                         Attribute.ID: hsm_id, Attribute.TOKEN: True},
        private_template={Attribute.ID: hsm_id, Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False})
    os.environ["PYKCS11LIB"] = _softhsm.MODULE
    from hsmsign.keystore.pkcs11 import public_key_from_object

    hsm_public = tuf_key(public_key_from_object(session_rw.get_key(
        object_class=ObjectClass.PUBLIC_KEY, id=hsm_id)))

    def bare_loop(count: int) -> None:
        for _ in range(count):
            bare_key.sign(hashlib.sha256(payload).digest(), mechanism=Mechanism.ECDSA)

    def hsmsign_loop(count: int) -> None:
        for _ in range(count):
            signer.sign(payload)

    def hsmsigner_loop(count: int) -> None:
        # HSMSigner logs in for every signature, which this process (already logged in)
        # cannot do: it runs in a process of its own and times only its signing loop.
        import json
        import subprocess

        script = (
            "import json, sys, time\n"
            "from securesystemslib.signer import HSMSigner, SSlibKey\n"
            "key = SSlibKey.from_dict(sys.argv[1], json.loads(sys.argv[2]))\n"
            f"signer = HSMSigner(2, key, lambda _: {_softhsm.PIN!r}, {_softhsm.LABEL!r})\n"
            "payload = bytes.fromhex(sys.argv[3]); n = int(sys.argv[4])\n"
            "key.verify_signature(signer.sign(payload), payload)\n"
            "start = time.perf_counter()\n"
            "for _ in range(n): signer.sign(payload)\n"
            "print(time.perf_counter() - start)\n")
        out = subprocess.run([sys.executable, "-c", script, hsm_public.keyid,
                              json.dumps(hsm_public.to_dict()), payload.hex(), str(count)],
                             check=True, capture_output=True, text=True).stdout
        return float(out)

    # Correctness first: every path makes signatures the public keys verify.
    signer.public_key.verify_signature(signer.sign(payload), payload)

    rates = {"bare python-pkcs11": [], "hsmsign TokenSigner": [], "securesystemslib HSMSigner": []}
    for _ in range(rounds):  # interleaved, so machine noise hits all alike
        for name, loop, count in (("bare python-pkcs11", bare_loop, n),
                                  ("hsmsign TokenSigner", hsmsign_loop, n),
                                  ("securesystemslib HSMSigner", hsmsigner_loop, max(50, n // 20))):
            start = time.perf_counter()
            inner = loop(count)
            rates[name].append(count / (inner if inner is not None else time.perf_counter() - start))
    base = statistics.median(rates["bare python-pkcs11"])
    print(f"P-256 on SoftHSM, payload {len(payload)} bytes, {rounds} interleaved rounds, median:")
    print(f"{'path':30} {'sig/s':>10} {'vs bare':>8}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:30} {rate:10.0f} {rate / base:8.2f}x")
    store.close()
    session.close()
    session_rw.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
