"""A throwaway SoftHSM2 token for benchmarks (never the user's configuration)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "hsmsign-bench"
PIN = "123456"


def make_token() -> Path:
    """A new token dir; sets SOFTHSM2_CONF for this process (before python-pkcs11 loads)."""
    root = Path(tempfile.mkdtemp(prefix="hsmsign-bench-hsm-"))
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN,
                    "--so-pin", "12345678"], check=True, capture_output=True)
    return root


def env() -> dict[str, str]:
    return {"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"], "HSMSIGN_PKCS11_MODULE": MODULE,
            "HSMSIGN_TOKEN_LABEL": LABEL, "HSMSIGN_PIN": PIN}
