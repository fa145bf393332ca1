"""The keys the service serves, and the stores behind them: one worker thread per store.

A PKCS#11 session belongs to one thread at a time, so the hardware stores (token, YubiKey)
share one worker thread that does everything with them (sign, probe, recover, list at reload);
the token's one logged-in session is reused for every request. File keys are decrypted once, at
start or at the reload that first names them, and sign in a small pool of their own
(cryptography releases the GIL); network stores (a cloud KMS) sign in a pool of their own, so a
slow network never holds up the token.

A store whose signing fails is marked down: requests for its keys are answered 503 at once,
and a recovery task tries every `RECOVERY_SECONDS` to bring it back (for a token: finalize and
initialize the module again, which is how SoftHSM and most modules see a token put back, and
log in with the PIN the process already has). No request waits for a token that is not there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from securesystemslib.signer import Key, Signer

from hsmsign.keys import KeyRecord
from hsmsign.keystore.base import StoreKind
from hsmsign.keystore.stores import KeyStores
from hsmsign.service.errors import StoreUnavailable
from hsmsign.service.handoff import BatchedWorker
from hsmsign.service.policy import Policy
from hsmsign.signing import signer_for

logger = logging.getLogger(__name__)

RECOVERY_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 5.0
# One worker thread for these (PKCS#11, PC/SC).
HARDWARE_KINDS = (StoreKind.TOKEN, StoreKind.YUBIKEY)
NETWORK_WORKERS = 8


def _kind(record: KeyRecord) -> str:
    return str(getattr(record.store, "value", record.store))


def _probe_token(stores: KeyStores) -> None:
    stores.token.token_name  # noqa: B018 - asks the token itself, not what was read before
    stores.token.login()


def _recover_token(stores: KeyStores) -> None:
    stores.token.rescan()
    _probe_token(stores)


# How to check that a store answers and is logged in, and how to bring it back, where that is
# more than the store's own `require_present()` (which the others get).
PROBES: dict[str, Callable[[KeyStores], Any]] = {StoreKind.TOKEN: _probe_token}
RECOVERIES: dict[str, Callable[[KeyStores], Any]] = {StoreKind.TOKEN: _recover_token}


def _probe(kind: str, store) -> Callable[[KeyStores], Any] | None:
    if kind in PROBES:
        return PROBES[kind]
    if kind == StoreKind.FILE or not hasattr(store, "require_present"):
        return None  # files are read once, at start: nothing to ask
    return lambda _stores: store.require_present()


@dataclass
class ServedKey:
    record: KeyRecord
    public_key: Key
    signer: Signer

    @property
    def kind(self) -> str:
        return _kind(self.record)

    def to_json(self) -> dict:
        return {"keyid": self.record.keyid, "role": self.record.role, "gun": self.record.gun,
                "public_key": self.public_key.to_dict()}


@dataclass
class StoreState:
    kind: str
    store: Any = None
    problem: str | None = None  # why it is down; None when up
    since: float = 0.0

    @property
    def probe(self) -> Callable[[KeyStores], Any] | None:
        return _probe(self.kind, self.store)

    @property
    def up(self) -> bool:
        return self.problem is None


class KeyRing:
    def __init__(self, stores: KeyStores):
        self.stores = stores
        self.keys: dict[str, ServedKey] = {}
        self.states: dict[str, StoreState] = {}
        self._hardware = ThreadPoolExecutor(1, thread_name_prefix="hsmsign-hardware")
        self._hardware_signing = BatchedWorker(self._hardware)
        self._software = ThreadPoolExecutor(2, thread_name_prefix="hsmsign-files")
        self._network = ThreadPoolExecutor(NETWORK_WORKERS, thread_name_prefix="hsmsign-network")
        self._recovery: asyncio.Task | None = None

    # -- loading (at start: in this thread; at reload: on the hardware worker) ------------

    def load(self, policy: Policy) -> dict[str, ServedKey]:
        """The keys `policy` grants, with signers ready (file keys decrypted, tokens logged in);
        `PolicyError` when the policy names a key no store holds."""
        listing = self.stores.list_keys()
        best: dict[str, KeyRecord] = {}
        for record in listing.keys:
            if record.keyid not in best:
                best[record.keyid] = self.stores.locate(record.keyid)[0]
        policy.check_keys(best.values())
        served = {}
        for record in policy.served(best.values()):
            old = self.keys.get(record.keyid)
            if old is not None and old.record == record:
                served[record.keyid] = old
                continue
            signer = signer_for(self.stores, record.keyid)
            kind = _kind(record)
            if kind == StoreKind.FILE:
                self.stores.files.private_key(record.keyid)  # decrypt now, once
            state = self.states.setdefault(kind, StoreState(kind, self.stores.store_of(record)))
            if state.probe is not None:
                state.probe(self.stores)  # logged in (a token) and reachable now
            served[record.keyid] = ServedKey(record, signer.public_key, signer)
        return served

    def use(self, keys: dict[str, ServedKey]) -> None:
        self.keys = keys

    async def reload(self, policy: Policy) -> None:
        loop = asyncio.get_running_loop()
        self.use(await loop.run_in_executor(self._hardware, self.load, policy))

    # -- signing ---------------------------------------------------------------------------

    def _executor(self, kind: str) -> ThreadPoolExecutor:
        if kind in HARDWARE_KINDS:
            return self._hardware
        return self._software if kind == StoreKind.FILE else self._network

    async def sign(self, key: ServedKey, payload: bytes) -> str:
        """The hex signature of `payload`; `StoreUnavailable` when the store does not answer."""
        state = self.states[key.kind]
        if not state.up:
            raise StoreUnavailable(self._down_message(state))
        try:
            if key.kind in HARDWARE_KINDS:  # one thread: requests waiting share its hand-offs
                signature = await self._hardware_signing.call(key.signer.sign, payload)
            else:
                signature = await asyncio.get_running_loop().run_in_executor(
                    self._executor(key.kind), key.signer.sign, payload)
        except Exception as e:  # noqa: BLE001 - any store failure: down until it answers again
            self._mark_down(state, f"{type(e).__name__}: {e}")
            raise StoreUnavailable(self._down_message(state)) from None
        return signature.signature

    def _down_message(self, state: StoreState) -> str:
        return (f"the {state.kind} store does not answer ({state.problem}); the service retries "
                "by itself, try again shortly")

    def _mark_down(self, state: StoreState, problem: str) -> None:
        if state.up:
            logger.warning("%s store down: %s", state.kind, problem)
            state.since = time.monotonic()
        state.problem = problem
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())

    # -- health ------------------------------------------------------------------------------

    async def probe(self) -> dict[str, str | None]:
        """Ask every store in use whether it answers and is logged in: kind -> problem or None."""
        loop = asyncio.get_running_loop()
        for state in list(self.states.values()):
            check = state.probe
            if check is None or not state.up:
                continue
            try:
                await asyncio.wait_for(loop.run_in_executor(self._executor(state.kind), check,
                                                            self.stores),
                                       PROBE_TIMEOUT_SECONDS)
            except Exception as e:  # noqa: BLE001
                self._mark_down(state, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        return {kind: state.problem for kind, state in self.states.items()}

    async def _recover(self) -> None:
        loop = asyncio.get_running_loop()
        while any(not state.up for state in self.states.values()):
            await asyncio.sleep(RECOVERY_SECONDS)
            for state in self.states.values():
                if state.up:
                    continue
                bring_back = RECOVERIES.get(state.kind, state.probe)
                try:
                    if bring_back is not None:
                        await loop.run_in_executor(self._executor(state.kind), bring_back,
                                                   self.stores)
                except Exception as e:  # noqa: BLE001 - still gone: try again later
                    state.problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                    continue
                logger.warning("%s store back after %.1f s", state.kind,
                               time.monotonic() - state.since)
                state.problem = None

    def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
        for executor in (self._hardware, self._software, self._network):
            executor.shutdown(wait=True)
        self.stores.close()


