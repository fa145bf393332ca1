"""`yubikeys.json` in the home: what hsmsign put into which slot of which YubiKey.

Firmware before 5.3 cannot report a slot's PIN and touch policies; the record keeps what was
set, and which YubiKey holds a key, for a device that is not plugged in.
"""

from __future__ import annotations

import json
from pathlib import Path

RECORD_FILE = "yubikeys.json"


class YubiKeyRecord:
    """The record in `home` (none, and nothing written, without a home)."""

    def __init__(self, home: Path | None):
        self.home = home

    def check_home(self) -> None:
        if self.home is not None:
            from hsmsign.config import check_home

            check_home(self.home)

    @property
    def path(self) -> Path | None:
        return self.home / RECORD_FILE if self.home is not None else None

    def read(self) -> dict:
        """serial (text) -> slot name -> what hsmsign set; empty when unreadable."""
        path = self.path
        if path is None or not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def slots(self, serial: int) -> dict:
        return self.read().get(str(serial), {})

    def serial_of(self, keyid: str) -> int | None:
        for serial, slots in self.read().items():
            if any(isinstance(e, dict) and e.get("keyid") == keyid for e in slots.values()):
                return int(serial)
        return None

    def remember(self, serial: int, slot: str, entry: dict) -> None:
        data = self.read()
        data.setdefault(str(serial), {})[slot] = entry
        self._write(data)

    def forget(self, serial: int, slot: str | None) -> None:
        """Drop one slot's entry, or (slot None) the whole YubiKey's."""
        data = self.read()
        if slot is None:
            data.pop(str(serial), None)
        else:
            data.get(str(serial), {}).pop(slot, None)
        self._write(data)

    def _write(self, data: dict) -> None:
        path = self.path
        if path is None:
            return
        from hsmsign.config import ensure_home
        from hsmsign.fsutil import atomic_write

        ensure_home(path.parent)
        atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
