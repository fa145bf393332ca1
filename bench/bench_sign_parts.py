"""The parts of signing 1,000 prepared Metadata, timed apart (what bench_repository.py part 2
compares as a whole): canonical JSON, the token's signature through hsmsign, the check of
that signature, then `SigningService.sign_many` and the bare loop.

    python bench/bench_sign_parts.py [N=1000] [ROUNDS=5]

Wall time per object, median over rounds (all rounds shown). With these, `sign_many` can do
no better than JSON + max(signature, check) per object on two cores, against the bare loop's
JSON + signature. Two more rows show what the GIL allows: the token signing in one thread while
another checks (the overlap `sign_many` uses), and the check while another thread serialises
(canonical JSON is pure Python and holds the GIL, which each check needs twice); the last line
is the ceiling JSON + (signature || check) as a ratio of the bare loop.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402

TOKEN_DIR = _softhsm.make_token()  # sets SOFTHSM2_CONF before python-pkcs11 loads

from bench_repository import prepared  # noqa: E402


def main() -> None:
    from pkcs11 import Mechanism, ObjectClass
    from tuf.api.serialization.json import CanonicalJSONSerializer

    from hsmsign.config import TokenConfig
    from hsmsign.keys import ALGORITHMS, tuf_key
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets
    from hsmsign.signing import SigningService

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    stores = KeyStores(TOKEN_DIR / "home", Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}),
                       TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL, explicit=True))
    record = stores.token.generate("targets", ALGORITHMS["ecdsa-p256"])
    key = tuf_key(stores.token.public_key(record.keyid))
    keys = {key.keyid: key}
    service = SigningService(stores)
    private = stores.token._login().get_key(object_class=ObjectClass.PRIVATE_KEY,
                                            id=stores.token._get(key.keyid).cka_id)
    serializer = CanonicalJSONSerializer()
    signer = service.signer(key.keyid, key)
    checker = service._checker(key)

    def per_object(work) -> tuple[float, object]:
        started = time.perf_counter()
        result = work()
        return (time.perf_counter() - started) / n * 1e6, result

    def bare(mds) -> None:
        for md in mds:
            data = serializer.serialize(md.signed)
            private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)

    def beside(other, work) -> None:
        """`work` in this thread while `other` runs in a second one; until both are done."""
        thread = threading.Thread(target=other)
        thread.start()
        work()
        thread.join()

    def check() -> None:
        for s, p in zip(signatures, payloads, strict=True):
            checker.verify_signature(s, p)

    times: dict[str, list[float]] = {k: [] for k in (
        "canonical JSON", "hsmsign token signature", "check (verify)",
        "signature || check", "check beside JSON", "sign_many", "bare loop")}
    for _ in range(rounds):
        mds = prepared(n)
        us, payloads = per_object(lambda: [serializer.serialize(md.signed) for md in mds])
        times["canonical JSON"].append(us)
        us, signatures = per_object(lambda: [signer.sign(p) for p in payloads])
        times["hsmsign token signature"].append(us)
        us, _ = per_object(check)
        times["check (verify)"].append(us)
        us, _ = per_object(lambda: beside(lambda: [signer.sign(p) for p in payloads], check))
        times["signature || check"].append(us)
        us, _ = per_object(lambda: beside(
            lambda: [serializer.serialize(md.signed) for md in mds], check))
        times["check beside JSON"].append(us)
        mds = prepared(n)
        us, _ = per_object(lambda: service.sign_many([(md, "targets", keys, 1) for md in mds]))
        times["sign_many"].append(us)
        mds = prepared(n)
        us, _ = per_object(lambda: bare(mds))
        times["bare loop"].append(us)
    print(f"{_softhsm.machine()}\n{n} objects, {rounds} rounds, µs per object (median; rounds)")
    for name, values in times.items():
        print(f"  {name:<24} {statistics.median(values):6.1f}   "
              f"{' '.join(f'{v:.0f}' for v in values)}")
    median = {name: statistics.median(values) for name, values in times.items()}
    ceiling = median["canonical JSON"] + median["signature || check"]
    print(f"ceiling: JSON + (signature || check) = {ceiling:.0f} µs, "
          f"{median['bare loop'] / ceiling:.2f}x of the bare loop; "
          f"sign_many {median['bare loop'] / median['sign_many']:.2f}x")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(TOKEN_DIR, ignore_errors=True)
