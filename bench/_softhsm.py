"""A throwaway SoftHSM2 token for benchmarks (never the user's configuration), and a one-line
description of the machine for the benchmarks' tables."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from pathlib import Path

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "hsmsign-bench"
PIN = "123456"
SO_PIN = "12345678"


def make_token() -> Path:
    """A new token dir; sets SOFTHSM2_CONF for this process (before python-pkcs11 loads)."""
    root = Path(tempfile.mkdtemp(prefix="hsmsign-bench-hsm-"))
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN,
                    "--so-pin", SO_PIN], check=True, capture_output=True)
    return root


def env() -> dict[str, str]:
    return {"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"], "HSMSIGN_PKCS11_MODULE": MODULE,
            "HSMSIGN_TOKEN_LABEL": LABEL, "HSMSIGN_PIN": PIN}


def machine() -> str:
    """E.g. "2 cores (AMD EPYC), Linux 6.1, Python 3.11.7, SoftHSM 2.6.1"."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = f" ({line.split(':', 1)[1].strip()})"
                break
    except OSError:
        pass
    try:
        softhsm = subprocess.run(["softhsm2-util", "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        softhsm = "?"
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load {os.getloadavg()[0]:.2f}"
    return (f"{os.cpu_count()} cores{cpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, SoftHSM {softhsm}{load}")
