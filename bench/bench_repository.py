"""Repository speed, each against a bare python-tuf baseline measured in the same run.

1. `hsmsign target add REPO --from-manifest` of 100,000 targets (the real CLI in a process of
   its own, on a fresh copy each round of a repository made by `hsmsign repo init` with file
   keys: all four keys in passphrase-encrypted files, no token) against a bare python-tuf
   script, also a process of its own, that builds the same `Targets` from the same manifest,
   signs it with one in-memory ECDSA key (securesystemslib `CryptoSigner`, P-256 like
   hsmsign's targets key) and calls `Metadata.to_file` (python-tuf's default `JSONSerializer`;
   it fsyncs). Wall time, CPU time and peak RSS of each process; medians of ROUNDS (default
   3) alternating rounds. Target: at most 1.3x the time and the peak memory.
2. Signing 1,000 prepared `Metadata` objects with one P-256 key on SoftHSM, same key, same
   objects, in the same run:
   * bare sign loop: `CanonicalJSONSerializer().serialize(md.signed)`, then python-pkcs11 in
     one session (CKM_ECDSA over a hashlib sha256 digest), raw r || s kept;
   * bare sign-then-verify loop: the same plus a DER `Signature` and securesystemslib's
     `Key.verify_signature` of each;
   * `SigningService.sign_many` (verifies every new signature before keeping it), and
     `SigningService.sign(md, role, keys, threshold)` one by one for comparison;
   * `Metadata.sign` with `Signer.from_priv_key_uri("hsmsign:<keyid>", ...)`, the securesystemslib
     URI, in a process of its own (a PKCS#11 login belongs to a process, and this one is logged
     in already; a second login in it is refused), timing only its loop;
   * securesystemslib's `HSMSigner` (which logs in for every signature), likewise.
   Targets (issue 13): sign_many >= 0.75x the bare sign loop and >= 1.0x the bare
   sign-then-verify loop; the hsmsign: URI >= 0.9x the bare sign loop.

Rounds are interleaved (and their order alternates) so that load from anything else on the
machine hits every contender alike; the tables show medians.

    python bench/bench_repository.py [N_TARGETS] [N_METADATA] [ROUNDS] [SIGN_ROUNDS]
    (N_TARGETS 0: part 2 only; N_METADATA 0: part 1 only; ROUNDS 3 and SIGN_ROUNDS 7 by default)
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

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import _softhsm  # noqa: E402

PASSPHRASES = {f"HSMSIGN_{role}_PASSPHRASE": f"bench {role.lower()} passphrase"
               for role in ("ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP")}
TARGETS_PER_METADATA = 5
TIME = "/usr/bin/time"  # GNU time (Debian: apt-get install time)

BARE_SCRIPT = r'''
import json, sys
from datetime import datetime, timedelta, timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets, TargetFile
manifest_path, out_path = sys.argv[1:3]
with open(manifest_path, "rb") as f:
    manifest = json.loads(f.read())
md = Metadata(Targets(expires=datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=90)))
for path, entry in manifest.items():
    md.signed.targets[path] = TargetFile(entry["length"], entry["hashes"], path)
md.sign(CryptoSigner.generate_ecdsa())  # one in-memory P-256 key
md.to_file(out_path)  # python-tuf's own write: default JSONSerializer, FilesystemBackend (fsync)
'''

HSMSIGNER_SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_repository import timed_metadata_signing
from securesystemslib.signer import HSMSigner, SSlibKey
keyid, keydict, cka_id, label, pin, n = sys.argv[2:8]
key = SSlibKey.from_dict(keyid, json.loads(keydict))
signer = HSMSigner(int(cka_id), key, lambda _: pin, label)
print(timed_metadata_signing(signer, key, int(n)))
'''


URI_SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_repository import prepared, timed_metadata_signing
from securesystemslib.signer import Signer, SSlibKey
import hsmsign.signing  # registers the hsmsign: URI scheme (docs/tokens.md)
keyid, keydict, pin, n = sys.argv[2:6]
key = SSlibKey.from_dict(keyid, json.loads(keydict))
signer = Signer.from_priv_key_uri(f"hsmsign:{keyid}", key, lambda _: pin)
prepared(1)[0].sign(signer, append=True)  # log in and find the key before timing, as the bare loop
print(timed_metadata_signing(signer, key, int(n)))
'''


def timed_metadata_signing(signer, key, n: int) -> float:
    """Seconds for `Metadata.sign` of `n` prepared roles with `signer` (the first and last
    signatures checked against `key` afterwards, outside the timing)."""
    mds = prepared(n)
    start = time.perf_counter()
    for md in mds:
        md.sign(signer, append=True)
    elapsed = time.perf_counter() - start
    for md in (mds[0], mds[-1]):
        key.verify_signature(md.signatures[key.keyid], md.signed_bytes)
    return elapsed


def prepared(n: int):
    """`n` small targets roles, as a delegation of a release tool would have: unsigned."""
    from tuf.api.metadata import Metadata, TargetFile, Targets

    out = []
    for i in range(n):
        md = Metadata(Targets(version=i + 1))
        for j in range(TARGETS_PER_METADATA):
            path = f"app/{i}/v{j}.tar.gz"
            md.signed.targets[path] = TargetFile(1000 + j, {"sha256": f"{i:032x}{j:032x}"}, path)
        out.append(md)
    return out


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of one process.

    CPU and memory come from GNU time: a child forked straight from this (big) process would
    start with this process's peak RSS as its own.
    """
    with tempfile.NamedTemporaryFile("w+") as report, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run([TIME, "-o", report.name, "-f", "%U %S %M", *argv], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                              check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}):\n{err.read().decode()}")
        user, system, rss = report.read().split()[-3:]
    return wall, float(user) + float(system), int(rss)


def clean_environ(**extra: str) -> dict[str, str]:
    foreign = ("HSMSIGN_", "NOTARY_", "DOCKER_CONTENT_TRUST_", "PYKCS11LIB")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(foreign)}, **extra}


def write_manifest(path: Path, n: int) -> None:
    path.write_text(json.dumps({
        f"pkg/{i % 100}/file-{i}.tar.gz": {"length": 1000 + i,
                                           "hashes": {"sha256": hashlib.sha256(str(i).encode()).hexdigest()}}
        for i in range(n)}))


def hsmsign_command() -> list[str]:
    script = Path(sys.executable).with_name("hsmsign")  # the console script users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "hsmsign"]


# -- 1. a 100,000-target manifest ------------------------------------------------------------


def manifest_bench(work: Path, n_targets: int, rounds: int) -> list[str]:
    # File keys only: no token configured, and SoftHSM (which auto-detection loads) has none.
    (work / "no-tokens").mkdir()
    (work / "no-tokens.conf").write_text(f"directories.tokendir = {work / 'no-tokens'}\n"
                                         "log.level = ERROR\n")
    env = clean_environ(SOFTHSM2_CONF=str(work / "no-tokens.conf"), **PASSPHRASES)
    bare_env = clean_environ()
    hsmsign = hsmsign_command()
    subprocess.run([*hsmsign, "--home", str(work / "prepared-home"), "repo", "init",
                    str(work / "prepared-repo")], env=env, check=True, capture_output=True)
    manifests = {n: work / f"manifest-{n}.json" for n in (n_targets, 1)}
    for n, path in manifests.items():
        write_manifest(path, n)

    def bare(n: int):
        return measure([sys.executable, "-c", BARE_SCRIPT, str(manifests[n]),
                        str(work / "bare.json")], bare_env)

    def cli(n: int):
        for name in ("home", "repo"):  # a freshly initialised repository, copied untimed
            shutil.rmtree(work / name, ignore_errors=True)
            shutil.copytree(work / f"prepared-{name}", work / name, symlinks=True)
        return measure([*hsmsign, "--home", str(work / "home"), "target", "add", str(work / "repo"),
                        "--from-manifest", str(manifests[n])], env)

    rows = {("bare", n_targets): [], ("hsmsign", n_targets): [], ("bare", 1): [], ("hsmsign", 1): []}
    for r in range(rounds):
        order = list(rows) if r % 2 == 0 else list(reversed(rows))
        for who, n in order:
            rows[who, n].append((bare if who == "bare" else cli)(n))
            if os.environ.get("BENCH_VERBOSE"):
                wall, cpu, rss = rows[who, n][-1]
                print(f"{who} {n}: wall {wall:.2f} s, CPU {cpu:.2f} s, {rss} KiB", file=sys.stderr)
            if n == n_targets:
                check_same_targets(work, who, n_targets)

    def med(who, n, i):
        return statistics.median(v[i] for v in rows[who, n])

    decrypt_ms = key_decryption_ms(work, env)
    names = {("bare", n_targets): f"bare python-tuf script, {n_targets:,} targets",
             ("hsmsign", n_targets): f"hsmsign target add, {n_targets:,} targets",
             ("bare", 1): "bare python-tuf script, 1 target",
             ("hsmsign", 1): "hsmsign target add, 1 target"}
    lines = [(f"1. {n_targets:,} targets from a manifest, sign, write: whole processes, "
              f"{rounds} alternating rounds, median; repository from `repo init` with file keys"),
             (f"{'':44} {'wall s':>7} {'vs bare':>7} {'CPU s':>7} {'vs bare':>7} "
              f"{'peak MiB':>8} {'vs bare':>7}")]
    for who, n in rows:
        w, c, m = (med(who, n, i) for i in range(3))
        bw, bc, bm = (med("bare", n, i) for i in range(3))
        lines.append(f"{names[who, n]:44} {w:7.2f} {w / bw:6.2f}x {c:7.2f} {c / bc:6.2f}x "
                     f"{m / 1024:8.0f} {m / bm:6.2f}x")
    ratio_t = med("hsmsign", n_targets, 0) / med("bare", n_targets, 0)
    ratio_m = med("hsmsign", n_targets, 2) / med("bare", n_targets, 2)
    paired = sorted(h[0] / b[0] for h, b in zip(rows["hsmsign", n_targets], rows["bare", n_targets],
                                                 strict=True))
    lines.append(f"ratios: time {ratio_t:.2f}x, peak memory {ratio_m:.2f}x (target <= 1.3x each: "
                 f"{'met' if ratio_t <= 1.3 and ratio_m <= 1.3 else 'NOT met'}); time ratio of "
                 f"each round's pair: {paired[0]:.2f}x to {paired[-1]:.2f}x")
    lines.append(f"hsmsign on top: validating every path and hash, snapshot + timestamp, decrypting "
                 f"3 file keys ({decrypt_ms:.0f} ms each, 600,000-iteration PBKDF2), checking the "
                 "new signatures, fsync of every file")
    return lines


def check_same_targets(work: Path, who: str, n: int) -> None:
    """Both sides wrote the same targets, signed; hsmsign also a snapshot and a timestamp."""
    from tuf.api.metadata import Metadata

    if who == "bare":
        md = Metadata.from_file(str(work / "bare.json"))
    else:
        md = Metadata.from_file(str(work / "repo" / "metadata" / "2.targets.json"))
        assert (work / "repo" / "metadata" / "2.snapshot.json").exists()
    assert len(md.signed.targets) == n and len(md.signatures) == 1, who
    expected = json.loads((work / f"manifest-{n}.json").read_text())
    sample = next(iter(expected))
    assert md.signed.targets[sample].to_dict() == expected[sample], who


def key_decryption_ms(work: Path, env: dict[str, str]) -> float:
    """What hsmsign pays per file key: the PBKDF2 of its encrypted PKCS#8."""
    from hsmsign.config import TokenConfig
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets

    stores = KeyStores(work / "prepared-home", Secrets(environ=env), TokenConfig(enabled=False))
    times = []
    for record in stores.files.list_keys():
        start = time.perf_counter()
        stores.files.private_key(record.keyid)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# -- 2. signing 1,000 prepared Metadata objects ---------------------------------------------


def service_bench(work: Path, n: int, rounds: int) -> list[str]:
    import pkcs11
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from pkcs11 import Mechanism, ObjectClass
    from securesystemslib.signer import Signature
    from tuf.api.serialization.json import CanonicalJSONSerializer

    from hsmsign.config import TokenConfig
    from hsmsign.keys import ALGORITHMS, tuf_key
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets
    from hsmsign.signing import SigningService

    stores = KeyStores(work / "service-home", Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}),
                       TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL, explicit=True))
    # HSMSigner names a key by an integer: CKA_ID = pkcs11.util.biginteger(int), which has
    # no leading zero byte. Generate until hsmsign's random CKA_ID has none, so that all four
    # contenders sign with the very same token key.
    while True:
        record = stores.token.generate("targets", ALGORITHMS["ecdsa-p256"])
        cka_id = stores.token._get(record.keyid).cka_id
        if cka_id[0] != 0:
            break
    key = tuf_key(stores.token.public_key(record.keyid))
    keys = {key.keyid: key}
    service = SigningService(stores)

    stores.token.login()  # one login for the process: the bare session below shares it
    session = pkcs11.lib(_softhsm.MODULE).get_token(token_label=_softhsm.LABEL).open()
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=cka_id)
    serializer = CanonicalJSONSerializer()
    sha256 = hashlib.sha256
    ecdsa = Mechanism.ECDSA

    def bare(mds) -> None:
        for md in mds:
            data = serializer.serialize(md.signed)
            raw = private.sign(sha256(data).digest(), mechanism=ecdsa)
            md.signatures[key.keyid] = Signature(key.keyid, raw.hex())

    def bare_checked(mds) -> None:  # the bare loop plus what hsmsign adds: DER, then verify
        for md in mds:
            data = serializer.serialize(md.signed)
            raw = private.sign(sha256(data).digest(), mechanism=ecdsa)
            half = len(raw) // 2
            der = encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                       int.from_bytes(raw[half:], "big"))
            signature = Signature(key.keyid, der.hex())
            key.verify_signature(signature, data)
            md.signatures[key.keyid] = signature

    def hsmsign(mds) -> None:
        sign = service.sign
        for md in mds:
            sign(md, "targets", keys, 1)

    def hsmsign_batch(mds) -> None:
        service.sign_many([(md, "targets", keys, 1) for md in mds])

    def hsmsigner(_mds) -> float:
        out = subprocess.run(
            [sys.executable, "-c", HSMSIGNER_SCRIPT, str(BENCH), key.keyid,
             json.dumps(key.to_dict()), str(int.from_bytes(cka_id, "big")), _softhsm.LABEL,
             _softhsm.PIN, str(n)],
            env=clean_environ(PYKCS11LIB=_softhsm.MODULE), check=True, capture_output=True,
            text=True).stdout
        return float(out)

    def uri(_mds) -> float:
        out = subprocess.run(
            [sys.executable, "-c", URI_SCRIPT, str(BENCH), key.keyid, json.dumps(key.to_dict()),
             _softhsm.PIN, str(n)],
            env=clean_environ(**_softhsm.env(), HSMSIGN_HOME=str(work / "service-home")),
            check=False, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"the hsmsign: URI process failed:\n{out.stderr}")
        return float(out.stdout)

    def check(name: str, mds) -> None:
        for md in (mds[0], mds[-1]):
            signature = md.signatures[key.keyid]
            if name == "bare":  # raw r||s, as the token returns it
                raw = bytes.fromhex(signature.signature)
                half = len(raw) // 2
                signature = Signature(key.keyid, encode_dss_signature(
                    int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")).hex())
            key.verify_signature(signature, md.signed_bytes)

    hsmsign(prepared(1))  # warm-up, as the bare loop's session and key are ready before timing
    loops = {"bare": bare, "bare + check": bare_checked, "hsmsign": hsmsign,
             "hsmsign batch": hsmsign_batch, "hsmsign: URI": uri, "HSMSigner": hsmsigner}
    in_other_process = ("hsmsign: URI", "HSMSigner")
    rates: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}  # CPU s per object, all threads
    for r in range(rounds):
        for name in (loops if r % 2 == 0 else reversed(loops)):
            mds = prepared(n)
            start, start_cpu = time.perf_counter(), time.process_time()
            inner = loops[name](mds)
            elapsed = inner if inner is not None else time.perf_counter() - start
            rates[name].append(n / elapsed)
            cpu[name].append((time.process_time() - start_cpu) / n)
            if name not in in_other_process:
                check(name, mds)
    stores.close()
    session.close()

    base = statistics.median(rates["bare"])
    checked = statistics.median(rates["bare + check"])
    names = {"bare": "bare sign loop: canonical JSON + python-pkcs11",
             "bare + check": "bare sign-then-verify: + DER + verify each",
             "hsmsign": "hsmsign SigningService.sign, one by one",
             "hsmsign batch": "hsmsign SigningService.sign_many",
             "hsmsign: URI": "hsmsign: URI signer (Metadata.sign)",
             "HSMSigner": "securesystemslib HSMSigner (Metadata.sign)"}
    lines = [(f"2. signing {n:,} prepared Metadata objects ({TARGETS_PER_METADATA} targets each), "
              f"P-256 on SoftHSM, {rounds} alternating rounds, median"),
             f"{'':46} {'per s':>7} {'vs bare':>7} {'vs bare+check':>13} {'CPU us/obj':>10}"]
    for name, values in rates.items():
        rate = statistics.median(values)
        own_cpu = (statistics.median(cpu[name]) * 1e6 if name not in in_other_process
                   else float("nan"))
        lines.append(f"{names[name]:46} {rate:7.0f} {rate / base:6.2f}x {rate / checked:12.2f}x "
                     f"{own_cpu:10.0f}")

    def per_round(name: str, against: str) -> str:
        ratios = sorted(b / a for a, b in zip(rates[against], rates[name], strict=True))
        return f"per round {ratios[0]:.2f}x-{ratios[-1]:.2f}x"

    def target(name: str, against: str, at_least: float) -> str:
        ratio = statistics.median(rates[name]) / statistics.median(rates[against])
        return (f"{ratio:.2f}x (target >= {at_least:g}x: {'met' if ratio >= at_least else 'NOT met'}; "
                f"{per_round(name, against)})")

    lines += [f"sign_many / bare sign loop:            {target('hsmsign batch', 'bare', 0.75)}",
              f"sign_many / bare sign-then-verify:     {target('hsmsign batch', 'bare + check', 1.0)}",
              f"hsmsign: URI signer / bare sign loop:  {target('hsmsign: URI', 'bare', 0.9)}",
              f"one by one {statistics.median(rates['hsmsign']) / base:.2f}x; HSMSigner "
              f"{statistics.median(rates['HSMSigner']) / base:.2f}x of the bare sign loop"]
    return lines


def main() -> None:
    n_targets = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    n_metadata = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    sign_rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 7
    if not os.access(TIME, os.X_OK):
        sys.exit(f"this benchmark needs GNU time at {TIME} (Debian: apt-get install time)")
    machine = getattr(_softhsm, "machine", None)
    if machine is not None:
        print(machine())
    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-repo-"))
    token_root = _softhsm.make_token()  # sets SOFTHSM2_CONF before python-pkcs11 loads
    try:
        if n_targets:  # 0: only part 2
            lines = manifest_bench(work, n_targets, rounds)
            print("\n".join(lines), flush=True)
            print()
        if n_metadata:  # 0: only part 1
            print("\n".join(service_bench(work, n_metadata, sign_rounds)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(token_root, ignore_errors=True)


if __name__ == "__main__":
    main()
