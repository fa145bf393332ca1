"""Start-up time of the command line: `hsmsign --help` and `hsmsign key list` with 100 file
keys, as median wall time over N runs, next to `python -c pass` from the same run, and what
each command imports (`python -X importtime`).

    python bench/bench_startup.py [--runs 20] [--keys 100]

Run it with the virtual environment's python: the commands are that python and its console
script `hsmsign` (the file next to it). Targets (issue): `hsmsign --help` <= 100 ms, and
`--help` imports none of pkcs11, tuf, securesystemslib, rich, cryptography.

Set-up, in a temporary directory removed at the end: a home with `--keys` passphrase-encrypted
P-256 key files made with `FileKeyStore.add` (the real KDF: ~75 ms per key), a SoftHSM token
holding one P-256 key, and an empty SoftHSM token directory. "no token" runs with
SOFTHSM2_CONF pointing at the empty directory and nothing configured, so auto-detection loads
the SoftHSM module and finds no token; "token" sets HSMSIGN_PKCS11_MODULE and
HSMSIGN_TOKEN_LABEL (no PIN: listing never logs in).

Byte code: the commands run with a fresh PYTHONPYCACHEPREFIX in the temporary directory (and
without PYTHONDONTWRITEBYTECODE), warmed by two untimed runs of each command, so every module
is loaded from a .pyc as after `pip install`, and the work tree is not written to. Runs are
interleaved (one of each command per round) so that load from other processes hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402

PASSPHRASE = "benchmark passphrase"
HELP_TARGET_MS = 100
NOT_AT_HELP = ("pkcs11", "tuf", "securesystemslib", "rich", "cryptography")
WATCHED = ("click", *NOT_AT_HELP, "asn1crypto", "ykman", "yubikit", "smartcard", "pyrage")
FOREIGN = ("HSMSIGN_", "SOFTHSM2_", "NOTARY_", "DOCKER_CONTENT_TRUST_", "PYTHONDONTWRITEBYTECODE",
           "PYTHONPYCACHEPREFIX", "PYKCS11LIB")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time, and the CPU time (user + system) of the command's process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imports(argv: list[str], env: dict[str, str]) -> tuple[set[str], float, list[tuple[float, str]]]:
    """Top-level packages a command imports, the time spent importing (ms, as measured under
    -X importtime, which adds its own overhead), and the outermost imports (ms, name)."""
    # The console script is a Python file: `python -X importtime script` runs what it runs.
    args = argv[1:] if argv[0] == sys.executable else argv
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    packages, total_us, outermost = set(), 0, []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        total_us += int(self_us)
        packages.add(name.strip().split(".")[0])
        if not name[1:].startswith(" "):  # not nested in another import
            outermost.append((int(cumulative_us) / 1000, name.strip()))
    return packages, total_us / 1000, sorted(outermost, reverse=True)


def make_file_keys(home: Path, count: int) -> None:
    from hsmsign.keys import ALGORITHMS, generate_private_key
    from hsmsign.keystore.file import FileKeyStore
    from hsmsign.secrets import Secrets

    store = FileKeyStore(home, Secrets(environ={}))
    for _ in range(count):
        store.add(generate_private_key(ALGORITHMS["ecdsa-p256"]), "targets", "example.com/app",
                  PASSPHRASE)


def make_token_key() -> None:
    from hsmsign.config import TokenConfig
    from hsmsign.keys import ALGORITHMS
    from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
    from hsmsign.secrets import Secrets

    store = Pkcs11KeyStore(TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL, explicit=True),
                           Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}))
    store.generate("root", ALGORITHMS["ecdsa-p256"])
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--top", type=int, default=0, metavar="K",
                        help="also list each command's K slowest outermost imports")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-startup-"))
    token_root = None
    try:
        token_root = _softhsm.make_token()  # sets SOFTHSM2_CONF for this process
        run(work, args.runs, args.keys, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if token_root is not None:
            shutil.rmtree(token_root, ignore_errors=True)


def run(work: Path, runs: int, keys: int, top: int) -> None:
    python = sys.executable
    script = str(Path(python).parent / "hsmsign")
    if not os.path.exists(script):
        script = shutil.which("hsmsign") or sys.exit("no `hsmsign` console script next to "
                                                      f"{python}: run with the venv's python")
    home = work / "home"
    started = time.perf_counter()
    make_file_keys(home, keys)
    make_token_key()
    setup_s = time.perf_counter() - started

    (work / "empty-tokens").mkdir()
    (work / "empty.conf").write_text(f"directories.tokendir = {work / 'empty-tokens'}\n"
                                     "log.level = ERROR\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    base["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    no_token = {**base, "SOFTHSM2_CONF": str(work / "empty.conf")}
    token_env = {k: v for k, v in _softhsm.env().items() if k != "HSMSIGN_PIN"}
    with_token = {**base, **token_env}
    key_list = [script, "--home", str(home), "key", "list"]
    cases = [
        ("python -c pass", [python, "-c", "pass"], no_token),
        ("hsmsign --help", [script, "--help"], no_token),
        ("python -m hsmsign --help", [python, "-m", "hsmsign", "--help"], no_token),
        (f"hsmsign key list, {keys} file keys, no token", key_list, no_token),
        (f"hsmsign key list --json, {keys} file keys, no token", [*key_list, "--json"], no_token),
        (f"hsmsign key list, {keys} file keys + SoftHSM token", key_list, with_token),
    ]

    # Correctness first (and warm-up: byte code is compiled into the cache here).
    for listing_env, expected in ((no_token, keys), (with_token, keys + 1)):
        out = subprocess.run([*key_list, "--json"], env=listing_env, check=True,
                             capture_output=True, text=True).stdout
        assert len(json.loads(out)) == expected, (len(json.loads(out)), expected)
    for _ in range(2):
        for _name, argv, env in cases:
            timed(argv, env)

    times: dict[str, list[float]] = {name: [] for name, _argv, _env in cases}
    cpu: dict[str, list[float]] = {name: [] for name, _argv, _env in cases}
    for _ in range(runs):
        for name, argv, env in cases:
            wall, used = timed(argv, env)
            times[name].append(wall)
            cpu[name].append(used)
    found = {}
    for name, argv, env in cases:  # -X importtime three times: the median total, one listing
        runs_of = sorted((imports(argv, env) for _ in range(3)), key=lambda found: found[1])
        found[name] = runs_of[1]

    base_ms = statistics.median(times["python -c pass"]) * 1000
    print(f"machine: {_softhsm.machine()}")
    print(f"median wall time over {runs} interleaved runs (set-up: {keys} file keys in "
          f"{setup_s:.1f} s)")
    print()
    base_cpu = statistics.median(cpu["python -c pass"]) * 1000
    print(f"{'command':50} {'ms':>7} {'vs pass':>8} {'cpu ms':>7} {'vs pass':>8} "
          f"{'importtime ms':>14}  heavy packages imported")
    for name, values in times.items():
        ms = statistics.median(values) * 1000
        cpu_ms = statistics.median(cpu[name]) * 1000
        packages, import_ms, _outermost = found[name]
        heavy = ", ".join(p for p in WATCHED if p in packages) or "-"
        print(f"{name:50} {ms:7.1f} {ms / base_ms:7.1f}x {cpu_ms:7.1f} {cpu_ms / base_cpu:7.1f}x "
              f"{import_ms:14.1f}  {heavy}")
    help_ms = statistics.median(times["hsmsign --help"]) * 1000
    leaked = [p for p in NOT_AT_HELP if p in found["hsmsign --help"][0]]
    print()
    print(f"hsmsign --help: {help_ms:.1f} ms = {help_ms / base_ms:.1f}x python -c pass "
          f"({help_ms - base_ms:+.1f} ms); target <= {HELP_TARGET_MS} ms: "
          f"{'met' if help_ms <= HELP_TARGET_MS else 'NOT MET'}")
    print(f"hsmsign --help imports {', '.join(leaked) if leaked else 'none'} of "
          f"{', '.join(NOT_AT_HELP)}: {'NOT MET' if leaked else 'met'}")
    for name in times if top else ():
        print(f"\n{name}: slowest outermost imports (cumulative ms under -X importtime)")
        for ms, module in found[name][2][:top]:
            print(f"  {ms:7.1f}  {module}")


if __name__ == "__main__":
    main()
