"""A private pcscd with vsmartcard's vpcd driver, for the PIV card emulator.

`PcscHarness.start()` runs Debian's `pcscd -f -c DIR` with a reader configuration of its own:
one vpcd entry named like a YubiKey's CCID interface (`FRIENDLYNAME "Yubico YubiKey
OTP+FIDO+CCID"`: ykman derives the device type from the reader name), on free TCP ports. vpcd
gives every entry two slots, so two readers appear ("... 00 00" and "... 00 01") and two
emulated YubiKeys can be plugged in at once.

pcscd's socket path is fixed at build time (/run/pcscd/pcscd.comm); clients (libpcsclite: pyscard,
ykcs11, yubico-piv-tool, pkcs11-tool) honour `$PCSCLITE_CSOCK_NAME`. When a mount namespace can
be made (`unshare --mount`, root or an unprivileged user namespace), pcscd runs with a private
directory bound over /run so that it never touches the machine's own pcscd; otherwise (a
container without CAP_SYS_ADMIN, as root) it uses /run/pcscd directly, when no other pcscd owns
it. `env()` gives the variables a client needs either way.

Only the pcscd started here is ever stopped, by its own process id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from piv_emulator import PivCard, VpcdCard

VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
READER_NAME = "Yubico YubiKey OTP+FIDO+CCID"
SYSTEM_SOCKET = Path("/run/pcscd/pcscd.comm")


class Unavailable(Exception):
    """pcscd cannot be started here; the message says why."""


def _free_port_pair() -> int:
    """A port P such that P and P + 1 are free (vpcd listens on both)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("0.0.0.0", port))
                b.bind(("0.0.0.0", port + 1))
            return port
        except OSError:
            continue
    raise Unavailable("no two consecutive free TCP ports for vpcd")


def _can_unshare() -> list[str] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    base = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        base.insert(1, "--map-root-user")
    probe = subprocess.run([*base, "true"], capture_output=True)
    return base if probe.returncode == 0 else None


class PcscHarness:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.socket: Path | None = None
        self.port: int | None = None
        self.cards: dict[int, VpcdCard] = {}
        self.log = workdir / "pcscd.log"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        pcscd = shutil.which("pcscd") or ("/usr/sbin/pcscd" if os.path.exists("/usr/sbin/pcscd") else None)
        if pcscd is None:
            raise Unavailable("pcscd is not installed (bash scripts/setup installs it)")
        if not os.path.exists(VPCD_DRIVER):
            raise Unavailable("vsmartcard-vpcd is not installed (bash scripts/setup installs it)")
        self.port = _free_port_pair()
        conf = self.workdir / "reader.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "vpcd").write_text(
            f'FRIENDLYNAME "{READER_NAME}"\n'
            f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{self.port:04X}\n")
        unshare = _can_unshare()
        if unshare is not None:
            run = self.workdir / "run"
            (run / "pcscd").mkdir(parents=True, exist_ok=True)
            self.socket = run / "pcscd" / "pcscd.comm"
            command = [*unshare, "sh", "-c", 'mount --bind "$1" /run && exec "$2" -f -c "$3"',
                       "sh", str(run), pcscd, str(conf)]
        else:
            if os.geteuid() != 0:
                raise Unavailable("pcscd needs root (for /run/pcscd) or a private mount namespace "
                                  "(`unshare --mount`), and neither is available here")
            if SYSTEM_SOCKET.exists():
                raise Unavailable(f"another pcscd owns {SYSTEM_SOCKET} and no private mount "
                                  "namespace can be made for a second one; stop the system's "
                                  "(`systemctl stop pcscd.socket pcscd`) to run these tests")
            self.socket = SYSTEM_SOCKET
            command = [pcscd, "-f", "-c", str(conf)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        # From here on a failure is a broken setup, not a missing facility: an error, not a skip.
        deadline = time.monotonic() + timeout
        while not (self.socket.exists() and self._listening()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pcscd exited at start ({self.proc.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-500:].strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("pcscd did not start within "
                                   f"{timeout:.0f} s: {self.log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
            return True
        except OSError:
            return False

    def stop(self) -> None:
        for index in list(self.cards):
            self.pull(index)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    # -- readers and cards --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {"PCSCLITE_CSOCK_NAME": str(self.socket)}

    def reader(self, index: int) -> str:
        return f"{READER_NAME} 00 {index:02d}"

    def insert(self, card: PivCard, index: int = 0) -> VpcdCard:
        """Plug `card` into reader `index` (0 or 1) and wait until pcscd has powered it."""
        if index in self.cards:
            self.pull(index)
        vpcd = VpcdCard(card, self.port + index)
        vpcd.insert()
        if not vpcd.powered.wait(10):
            raise AssertionError(f"pcscd did not power the card in reader {index}: "
                                 f"{self.log.read_text(errors='replace')[-500:]}")
        self.cards[index] = vpcd
        return vpcd

    def swap(self, card: PivCard, index: int = 0) -> None:
        """Put another card behind reader `index` without a removal (a fresh YubiKey, fast)."""
        self.cards[index].card = card

    def pull(self, index: int) -> None:
        vpcd = self.cards.pop(index, None)
        if vpcd is not None:
            vpcd.pull()
            time.sleep(0.5)  # pcscd polls for removal (every 400 ms)
