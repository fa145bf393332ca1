"""Benchmark: `hsmsign backup` of 1,000 key files against `tar | age` on the same files.

    python bench/bench_backup.py [--keys 1000] [--runs 5] [--work DIR]

Measured in one run, on the same home, wall clock, median of --runs:

    create        hsmsign backup create -o DIR -r RECIPIENT    (writes, fsyncs, reads back, checks)
    verify        hsmsign backup verify FILE -i IDENTITY
    restore       hsmsign backup restore FILE -i IDENTITY      (into an empty home)
    tar | age     tar -czf - DIR | age -r RECIPIENT > F
    age | tar     age -d -i IDENTITY F | tar -xzf -            (into an empty directory)
    start-up      hsmsign --version
    imports       python -c "import click, pyrage, tarfile, cryptography..., pkcs11, smartcard"

and prints the ratios the issue asks for: (create + verify) / (tar | age) and
restore / (age | tar), each to be at most 3. Both sides are whole processes started from
this script, so interpreter start-up is counted for hsmsign as it is for tar and age. The
same steps are also timed in-process (library calls, no start-up) for reference.

The key files are real: generated once with the full KDF (about 75 ms each, on every core)
and kept in --work for later runs.
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

FLOOR_IMPORTS = ("import click, pyrage, tarfile, cryptography.hazmat.primitives.serialization, "
                 "pkcs11, smartcard.System")
ROLES = ("targets", "snapshot", "timestamp", "releases", "qa", "root")
PASSPHRASE = "benchmark passphrase"


def _make_keys(args: tuple[str, int, int]) -> int:
    from hsmsign.keys import ALGORITHMS, generate_private_key
    from hsmsign.keystore.file import FileKeyStore
    from hsmsign.secrets import Secrets

    home, start, count = args
    store = FileKeyStore(Path(home), Secrets(environ={}))
    for n in range(start, start + count):
        alg = ALGORITHMS["ed25519" if n % 2 else "ecdsa-p256"]
        role = ROLES[n % len(ROLES)]
        gun = None if role == "root" else f"example.com/app{n % 7}"
        store.add(generate_private_key(alg), role, gun, PASSPHRASE)
    return count


def ensure_home(work: Path, keys: int) -> Path:
    home = work / f"home-{keys}"
    private = home / "private"
    have = len(list(private.glob("*.key"))) if private.is_dir() else 0
    if have == keys:
        return home
    shutil.rmtree(home, ignore_errors=True)
    print(f"generating {keys} key files (full KDF; kept in {home} for later runs)...",
          file=sys.stderr)
    workers = os.cpu_count() or 1
    chunk = -(-keys // workers)
    jobs = [(str(home), start, min(chunk, keys - start)) for start in range(0, keys, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_make_keys, jobs)) == keys
    return home


def timed(argv, **kwargs) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, **kwargs)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {argv}\n{done.stderr.decode(errors='replace')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "hsmsign-bench-backup")
    args = parser.parse_args()
    for tool in ("age", "age-keygen", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian packages age, tar)")
    args.work.mkdir(parents=True, exist_ok=True)
    home = ensure_home(args.work, args.keys)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    identity = run_dir / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HSMSIGN_", "NOTARY_"))}
    # No token: auto-detection would otherwise probe PKCS#11 modules on each run.
    env["SOFTHSM2_CONF"] = str(run_dir / "no-softhsm.conf")
    (run_dir / "no-tokens").mkdir()
    (run_dir / "no-softhsm.conf").write_text(f"directories.tokendir = {run_dir / 'no-tokens'}\n")
    # Byte code as after `pip install` (this machine sets PYTHONDONTWRITEBYTECODE, which would
    # make every hsmsign process compile its modules): a cache of the benchmark's own, warmed.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(run_dir / "pycache")
    hsmsign = [sys.executable, "-m", "hsmsign", "--home", str(home)]
    warm = run_dir / "warm"
    warm.mkdir()
    subprocess.run([*hsmsign, "backup", "create", "-o", str(warm), "-r", recipient], env=env,
                   check=True, capture_output=True)
    subprocess.run([*hsmsign, "backup", "verify", *warm.iterdir(), "-i", str(identity)], env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "hsmsign", "--home", str(run_dir / "warm-home"), "backup",
                    "restore", *warm.iterdir(), "-i", str(identity)], env=env, check=True,
                   capture_output=True)
    times: dict[str, list[float]] = {k: [] for k in ("create", "verify", "restore", "tar|age",
                                                     "age|tar", "start-up", "imports")}
    try:
        for n in range(args.runs):
            out = run_dir / f"usb{n}"
            out.mkdir()
            times["create"].append(timed([*hsmsign, "backup", "create", "-o", str(out), "-r",
                                          recipient], env=env))
            listing = sorted(p.name for p in out.iterdir())
            assert len(listing) == 1, listing
            archive = out / listing[0]
            times["verify"].append(timed([*hsmsign, "backup", "verify", str(archive), "-i",
                                          str(identity)], env=env))
            restored = run_dir / f"restored{n}"
            times["restore"].append(timed([sys.executable, "-m", "hsmsign", "--home",
                                           str(restored), "backup", "restore", str(archive),
                                           "-i", str(identity)], env=env))
            baseline = run_dir / f"baseline{n}.tar.gz.age"
            times["tar|age"].append(timed(
                ["bash", "-o", "pipefail", "-c",
                 f"tar -czf - -C {home} private public | age -r {recipient} > {baseline}"]))
            untarred = run_dir / f"untarred{n}"
            untarred.mkdir()
            times["age|tar"].append(timed(
                ["bash", "-o", "pipefail", "-c",
                 f"age -d -i {identity} {baseline} | tar -xzf - -C {untarred}"]))
            # For reference: an hsmsign process that does nothing (interpreter, click).
            times["start-up"].append(timed([*hsmsign, "--version"], env=env))
            # The floor of any Python `backup create`: an interpreter importing the libraries
            # it needs (CLI, age, tar, key parsing, the PKCS#11 and PC/SC probes), nothing else.
            times["imports"].append(timed([sys.executable, "-c", FLOOR_IMPORTS], env=env))
            assert len(list((restored / "private").iterdir())) == args.keys
            assert len(list((untarred / "private").iterdir())) == args.keys
        library = library_times(home, run_dir, recipient, identity, args.runs)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.keys} key files, median of {args.runs} runs (whole processes, seconds):")
    for k, v in med.items():
        print(f"  {k:<10} {v:7.3f}")
    create_verify = med["create"] + med["verify"]
    print(f"  create + verify / tar|age = {create_verify / med['tar|age']:.2f}x  (limit 3x)")
    print(f"  create alone    / tar|age = {med['create'] / med['tar|age']:.2f}x")
    print(f"  restore         / age|tar = {med['restore'] / med['age|tar']:.2f}x  (limit 3x)")
    print(f"  imports alone   / tar|age = {med['imports'] / med['tar|age']:.2f}x  "
          "(a process that only imports what `backup create` needs)")
    print("in-process library calls (no interpreter start-up), seconds:")
    for k, v in library.items():
        print(f"  {k:<10} {v:7.3f}")


def library_times(home: Path, run_dir: Path, recipient: str, identity: Path,
                  runs: int) -> dict[str, float]:
    from hsmsign.backup import create_backup, restore_backup, verify_backup
    from hsmsign.backup import parse_recipient
    from hsmsign.config import NO_TOKEN
    from hsmsign.keystore.stores import KeyStores
    from hsmsign.secrets import Secrets

    secrets = Secrets(environ={})
    out: dict[str, list[float]] = {"create": [], "verify": [], "restore": []}
    for n in range(runs):
        stores = KeyStores(home, secrets, NO_TOKEN)
        dest = run_dir / f"lib-usb{n}"
        dest.mkdir()
        started = time.perf_counter()
        result = create_backup(stores, [dest], recipients=[(recipient, parse_recipient(recipient, "--recipient"))])
        out["create"].append(time.perf_counter() - started)
        archive = Path(result.archives[0].path)
        started = time.perf_counter()
        verify_backup(archive, secrets, [identity])
        out["verify"].append(time.perf_counter() - started)
        started = time.perf_counter()
        restore_backup(archive, run_dir / f"lib-home{n}", secrets, [identity])
        out["restore"].append(time.perf_counter() - started)
    return {k: statistics.median(v) for k, v in out.items()}


if __name__ == "__main__":
    main()
