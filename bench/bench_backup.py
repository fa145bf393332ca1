"""Benchmark: `hsmsign backup create` and `backup restore` against the stock `tar` + `age`
pipelines doing the same work, on the same key files, in the same run.

    python bench/bench_backup.py [--keys 1000 10000] [--runs 5] [--work DIR]
                                 [--kdf-iterations 1000] [--in-process]

Whole processes, wall clock, medians of --runs alternating runs (hsmsign first in even runs,
the pipeline first in odd ones), an age recipient (X25519, not a passphrase) on both sides:

    create      hsmsign backup create -o DIR -r RECIPIENT   (writes, fsyncs, reads back, checks)
    tar+age     tar -czf - -C HOME private public | age -r RECIPIENT > F
                  && age -d -i IDENTITY F | tar -tzf - >/dev/null   (write, read back, list)
    restore     hsmsign backup restore ARCHIVE -i IDENTITY   (into an empty home)
    age|tar     age -d -i IDENTITY F | tar -xzf -           (into an empty directory)

Targets (issue 13): create <= 2x tar+age and restore <= 2x age|tar, with 10,000 keys; 1,000
keys are reported too. For reference, each run also times `hsmsign --version` (start-up) and a
process that only imports what `backup create` needs.

The fixture: one real key per file (P-256 and Ed25519 alternating, six roles, notary-style
`role:`/`gun:` headers), each written by hsmsign's own `FileKeyStore.add` (encrypted PKCS#8,
PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC, files 0600, a `.pub` beside each) but with
`kdf_iterations` lowered to --kdf-iterations (1,000 by default instead of 600,000: 10,000 keys
with the real KDF take ~25 minutes of CPU). Backup neither decrypts a key file nor reads its
iteration count, so the files are byte for byte what a user's are except for that number and
its KDF's output. The homes are kept in --work for later runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import _softhsm  # noqa: E402

FLOOR_IMPORTS = ("import click, pyrage, tarfile, cryptography.hazmat.primitives.serialization, "
                 "pkcs11, smartcard.System")
ROLES = ("targets", "snapshot", "timestamp", "releases", "qa", "root")
PASSPHRASE = "benchmark passphrase"
TARGET = 2.0


def _make_keys(args: tuple[str, int, int, int]) -> int:
    from hsmsign.keys import ALGORITHMS, generate_private_key
    from hsmsign.keystore.file import FileKeyStore
    from hsmsign.secrets import Secrets

    home, start, count, iterations = args
    store = FileKeyStore(Path(home), Secrets(environ={}), kdf_iterations=iterations)
    for n in range(start, start + count):
        alg = ALGORITHMS["ed25519" if n % 2 else "ecdsa-p256"]
        role = ROLES[n % len(ROLES)]
        gun = None if role == "root" else f"example.com/app{n % 7}"
        store.add(generate_private_key(alg), role, gun, PASSPHRASE)
    return count


def ensure_home(work: Path, keys: int, iterations: int) -> Path:
    home = work / f"home-{keys}-kdf{iterations}"
    private = home / "private"
    have = len(list(private.glob("*.key"))) if private.is_dir() else 0
    if have == keys:
        return home
    shutil.rmtree(home, ignore_errors=True)
    print(f"generating {keys:,} key files (PBKDF2 with {iterations:,} iterations; kept in "
          f"{home} for later runs)...", file=sys.stderr)
    workers = os.cpu_count() or 1
    chunk = -(-keys // workers)
    jobs = [(str(home), start, min(chunk, keys - start), iterations)
            for start in range(0, keys, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_make_keys, jobs)) == keys
    return home


def timed(argv, **kwargs) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, stdin=subprocess.DEVNULL,
                          **kwargs)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {argv}\n{done.stderr.decode(errors='replace')}")
    return elapsed


def hsmsign_command() -> list[str]:
    script = Path(sys.executable).with_name("hsmsign")  # the console script users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "hsmsign"]


def bench_keys(work: Path, keys: int, runs: int, iterations: int, in_process: bool) -> list[str]:
    home = ensure_home(work, keys, iterations)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    identity = run_dir / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HSMSIGN_", "NOTARY_", "DOCKER_CONTENT_TRUST_"))}
    # No token: SoftHSM (which auto-detection loads) has none here, nothing is configured.
    env["SOFTHSM2_CONF"] = str(run_dir / "no-softhsm.conf")
    (run_dir / "no-tokens").mkdir()
    (run_dir / "no-softhsm.conf").write_text(f"directories.tokendir = {run_dir / 'no-tokens'}\n"
                                             "log.level = ERROR\n")
    # Byte code as after `pip install` (this machine sets PYTHONDONTWRITEBYTECODE, which would
    # make every hsmsign process compile its modules): a cache of the benchmark's own, warmed.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(run_dir / "pycache")
    hsmsign = hsmsign_command()
    warm = run_dir / "warm"
    warm.mkdir()
    timed([*hsmsign, "--home", str(home), "backup", "create", "-o", str(warm), "-r", recipient],
          env=env)
    timed([*hsmsign, "--home", str(run_dir / "warm-home"), "backup", "restore", *warm.iterdir(),
           "-i", str(identity)], env=env)
    times: dict[str, list[float]] = {k: [] for k in ("create", "tar+age", "restore", "age|tar",
                                                     "start-up", "imports")}
    try:
        for n in range(runs):
            out = run_dir / f"usb{n}"
            out.mkdir()
            baseline = run_dir / f"baseline{n}.tar.gz.age"

            def create() -> None:
                times["create"].append(timed([*hsmsign, "--home", str(home), "backup", "create",
                                              "-o", str(out), "-r", recipient], env=env))

            def tar_age() -> None:
                times["tar+age"].append(timed(
                    ["bash", "-o", "pipefail", "-c",
                     f"tar -czf - -C {home} private public | age -r {recipient} > {baseline}"
                     f" && age -d -i {identity} {baseline} | tar -tzf - >/dev/null"]))

            restored = run_dir / f"restored{n}"
            untarred = run_dir / f"untarred{n}"

            def restore() -> None:
                (archive,) = out.iterdir()
                times["restore"].append(timed([*hsmsign, "--home", str(restored), "backup",
                                               "restore", str(archive), "-i", str(identity)],
                                              env=env))

            def age_tar() -> None:
                untarred.mkdir()
                times["age|tar"].append(timed(
                    ["bash", "-o", "pipefail", "-c",
                     f"age -d -i {identity} {baseline} | tar -xzf - -C {untarred}"]))

            pairs = [(create, tar_age), (restore, age_tar)]
            for ours, theirs in pairs:
                for step in ((ours, theirs) if n % 2 == 0 else (theirs, ours)):
                    step()
            # For reference: an hsmsign process that does nothing (interpreter, click), and
            # the floor of any Python `backup create`: importing the libraries it needs.
            times["start-up"].append(timed([*hsmsign, "--version"], env=env))
            times["imports"].append(timed([sys.executable, "-c", FLOOR_IMPORTS], env=env))
            assert len(list((restored / "private").iterdir())) == keys
            assert len(list((untarred / "private").iterdir())) == keys
            for d in (restored, untarred):  # keep the disk's file count steady between runs
                shutil.rmtree(d)
        library = library_times(home, run_dir, recipient, identity, runs) if in_process else {}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    create_ratio = med["create"] / med["tar+age"]
    restore_ratio = med["restore"] / med["age|tar"]

    def per_run(a: str, b: str) -> str:
        ratios = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
        return f"per run {ratios[0]:.2f}x-{ratios[-1]:.2f}x"

    def verdict(ratio: float) -> str:
        return f"target <= {TARGET:g}x: {'met' if ratio <= TARGET else 'NOT met'}"

    lines = [f"{keys:,} key files, medians of {runs} alternating runs (whole processes, s):"]
    lines += [f"  {k:<10} {v:7.3f}" for k, v in med.items()]
    lines += [f"  create  / tar+age = {create_ratio:.2f}x  ({verdict(create_ratio)}; "
              f"{per_run('create', 'tar+age')})",
              f"  restore / age|tar = {restore_ratio:.2f}x  ({verdict(restore_ratio)}; "
              f"{per_run('restore', 'age|tar')})",
              f"  imports alone / tar+age = {med['imports'] / med['tar+age']:.2f}x  (a process "
              "that only imports what `backup create` needs)"]
    if library:
        lines.append("  in-process library calls (no interpreter start-up), s:")
        lines += [f"    {k:<10} {v:7.3f}" for k, v in library.items()]
    return lines


def library_times(home: Path, run_dir: Path, recipient: str, identity: Path,
                  runs: int) -> dict[str, float]:
    from hsmsign.backup import create_backup, parse_recipient, restore_backup
    from hsmsign.config import NO_TOKEN
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets

    secrets = Secrets(environ={})
    out: dict[str, list[float]] = {"create": [], "restore": []}
    for n in range(runs):
        stores = KeyStores(home, secrets, NO_TOKEN)
        dest = run_dir / f"lib-usb{n}"
        dest.mkdir()
        started = time.perf_counter()
        result = create_backup(stores, [dest],
                               recipients=[(recipient, parse_recipient(recipient, "--recipient"))])
        out["create"].append(time.perf_counter() - started)
        archive = Path(result.archives[0].path)
        started = time.perf_counter()
        restore_backup(archive, run_dir / f"lib-home{n}", secrets, [identity])
        out["restore"].append(time.perf_counter() - started)
        shutil.rmtree(run_dir / f"lib-home{n}")
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kdf-iterations", type=int, default=1000,
                        help="PBKDF2 iterations of the fixture's key files (hsmsign: 600,000)")
    parser.add_argument("--in-process", action="store_true",
                        help="also time the library calls in this process")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "hsmsign-bench-backup")
    args = parser.parse_args()
    for tool in ("age", "age-keygen", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian packages age, tar)")
    print(_softhsm.machine())
    args.work.mkdir(parents=True, exist_ok=True)
    for keys in args.keys:
        print("\n".join(bench_keys(args.work, keys, args.runs, args.kdf_iterations,
                                   args.in_process)), flush=True)


if __name__ == "__main__":
    main()
