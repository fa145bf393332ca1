"""Lookups shared by the hardware stores, whose keys are found by scanning the device."""

from __future__ import annotations

from hsmsign.errors import KeyNotFound
from hsmsign.keys import KeyRecord
from hsmsign.keystore.base import KeyStore


class ScannedStore(KeyStore):
    """`_scan()` maps key ID -> an entry with `.record` and `.public_key`; `_missing(keyid)`
    says where the key was looked for."""

    def _scan(self) -> dict:
        raise NotImplementedError

    def _missing(self, keyid: str) -> str:
        raise NotImplementedError

    def list_keys(self) -> list[KeyRecord]:
        return [k.record for k in self._scan().values()]

    def keyids(self) -> list[str]:
        return list(self._scan())

    def record(self, keyid: str) -> KeyRecord:
        return self._get(keyid).record

    def public_key(self, keyid: str):
        return self._get(keyid).public_key

    def _get(self, keyid: str):
        try:
            return self._scan()[keyid]
        except KeyError:
            raise KeyNotFound(self._missing(keyid)) from None
