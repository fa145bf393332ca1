"""Start-up time of the command line: `hsmsign --help` and `hsmsign key list` with 100 file
keys, as median wall time over N runs, next to `python -c pass` from the same run.
Target: `hsmsign --help` <= 100 ms.

    python bench/bench_startup.py [N]
"""

from __future__ import annotations

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

PASSPHRASE = "benchmark passphrase"


def wall(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(runs: int = 20) -> None:
    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-startup-"))
    try:
        token_root = _softhsm.make_token()
        from hsmsign.keys import ALGORITHMS, generate_private_key
        from hsmsign.keystore.file import FileKeyStore
        from hsmsign.secrets import Secrets

        home = work / "home"
        store = FileKeyStore(home, Secrets(environ={}))
        for _ in range(100):
            store.add(generate_private_key(ALGORITHMS["ecdsa-p256"]), "targets", "example.com/app",
                      PASSPHRASE)
        (work / "empty-tokens").mkdir()
        (work / "empty.conf").write_text(f"directories.tokendir = {work / 'empty-tokens'}\n")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMSIGN_", "SOFTHSM2"))}
        no_token = {**base, "SOFTHSM2_CONF": str(work / "empty.conf")}
        with_token = {**base, **_softhsm.env()}
        hsmsign = [sys.executable, "-m", "hsmsign"]
        script = shutil.which("hsmsign") or str(Path(sys.executable).parent / "hsmsign")
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], no_token),
            ("hsmsign --help (console script)", [script, "--help"], no_token),
            ("python -m hsmsign --help", [*hsmsign, "--help"], no_token),
            ("key list, 100 file keys, no token", [*hsmsign, "--home", str(home), "key", "list"], no_token),
            ("key list, 100 file keys + SoftHSM token",
             [*hsmsign, "--home", str(home), "key", "list"], with_token),
        ]
        results = {name: wall(argv, env, runs) for name, argv, env in cases}
        base_time = results["python -c pass"]
        print(f"median wall time over {runs} runs")
        print(f"{'command':42} {'ms':>7} {'vs python -c pass':>18}")
        for name, t in results.items():
            print(f"{name:42} {t * 1000:7.1f} {t / base_time:17.1f}x")
        shutil.rmtree(token_root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
