"""The custodians' tokens during a ceremony: asking for each, logging in, making and attesting
its root key, asking for it again when it must sign, and listing what was made on it.

Each custodian's token is opened with a home of its own stores (the staged home plus that one
token), so that a key is only ever made on, or signed with, the token the plan names.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hsmsign.ceremony.plan import Custodian, Plan
from hsmsign.ceremony.preflight import pin_variables
from hsmsign.ceremony.transcript import Transcript
from hsmsign.ceremony.ui import CeremonyAborted, CeremonyUI
from hsmsign.config import YUBIKEYS_ONLY, TokenConfig, load_token_config
from hsmsign.errors import HsmsignError, WrongPin
from hsmsign.keys import algorithm
from hsmsign.keystore.stores import KeyStores
from hsmsign.secrets import Secrets


@dataclass
class CustodianToken:
    custodian: Custodian
    stores: KeyStores  # the staged home + this custodian's token
    keyid: str | None = None
    attestation: dict | None = None  # YubiKeys: what the attestation proved, and its PEM

    @property
    def store(self):
        """The store of this custodian's root key: their YubiKey (PIV) or PKCS#11 token."""
        return self.stores.yubikey if self.custodian.kind == "yubikey" else self.stores.token


class Custodians:
    """The tokens of one ceremony run: the custodians' (`tokens`), the old root's custodians'
    (`old_tokens`, for a rotation), and the keys made on tokens, with how to remove each."""

    def __init__(self, plan: Plan, ui: CeremonyUI, secrets: Secrets, transcript: Transcript, *,
                 home: Path, environ: Mapping[str, str], force: bool):
        self.plan = plan
        self.ui = ui
        self.secrets = secrets
        self.transcript = transcript
        self.home = home
        self.environ = environ
        self.force = force
        self.tokens: list[CustodianToken] = []
        self.old_tokens: list[CustodianToken] = []
        self.created_on_tokens: list[str] = []  # "<keyid> on <token>", for an abort
        self.removals: list[str] = []  # how to remove each of them, as a command

    def close(self) -> None:
        for token in (*self.tokens, *self.old_tokens):
            token.stores.close()

    def token_config(self, label: str) -> TokenConfig:
        base = load_token_config(self.home, module=self.plan.pkcs11_module, environ=self.environ)
        return TokenConfig(module=base.module, label=label, explicit=True)

    # -- finding tokens ------------------------------------------------------------------

    def _stores(self, custodian: Custodian, staged_home: Path) -> KeyStores:
        """The staged home with this custodian's token alone (their YubiKey, or PKCS#11 token)."""
        if custodian.kind == "yubikey":
            stores = KeyStores(staged_home, self.secrets, YUBIKEYS_ONLY, force=self.force,
                               notify=self.ui.tell)
            stores.yubikey.serial = custodian.yubikey_serial
            stores.yubikey.pin_variables = pin_variables(custodian)
            return stores
        config = dataclasses.replace(self.token_config(custodian.token_label), yubikeys=False)
        return KeyStores(staged_home, self.secrets, config, force=self.force, notify=self.ui.tell)

    def present(self) -> list[str]:
        """The YubiKeys and PKCS#11 tokens plugged in now, as the plan names them."""
        from hsmsign.keystore.pkcs11 import TokenError, list_tokens
        from hsmsign.keystore.yubikey import YubiKeyStore

        present = [f"yubikey:{serial}" for serial in YubiKeyStore(self.secrets).serials()]
        try:
            base = load_token_config(self.home, module=self.plan.pkcs11_module, environ=self.environ)
            present += [f"pkcs11:token={t.label}" for t in list_tokens(base) if t.label]
        except TokenError as e:
            # No module here: the custodians' tokens are checked one by one. But a module
            # the plan or the configuration names must load, or no pkcs11: token ever will.
            if base.module and any(c.kind == "pkcs11" for c in self.plan.custodians):
                raise HsmsignError(f"the PKCS#11 module cannot be used: {e}") from None
        return present

    def open(self, custodian: Custodian, index: int, staged_home: Path) -> CustodianToken:
        """A custodian's token, asked for until it is plugged in (a plan run stops instead)."""
        while True:
            stores = self._stores(custodian, staged_home)
            token = CustodianToken(custodian, stores)
            if token.store.is_present():
                return token
            stores.close()
            if self.plan.confirm_all:
                raise HsmsignError(f"{custodian.token_name} of {custodian.name} is not present")
            self.ui.pause(f"{custodian.token_name} is not present. Insert the token of "
                          f"{custodian.name} ({index} of {self.plan.tokens}) and press Enter")
            if custodian.kind == "pkcs11":
                stores.token.rescan([t.stores.token for t in self.tokens
                                     if t.custodian.kind == "pkcs11"])

    def insert(self, custodian: Custodian, index: int, staged_home: Path) -> CustodianToken:
        """Ask for a custodian's token, find it, and log in to it."""
        if not self.plan.confirm_all:
            self.ui.pause(f"Insert token {index} of {self.plan.tokens}, held by {custodian.name} "
                          f"({custodian.token}), then press Enter")
        token = self.open(custodian, index, staged_home)
        self.tokens.append(token)
        self.login(token)
        return token

    def require_inserted(self, token: CustodianToken, purpose: str) -> None:
        """A custodian's token once more (to sign): with one USB port, it was pulled out for
        the next custodian's. Asked for until it is back; a plan run stops instead."""
        others = [t.stores.token for t in self.tokens if t is not token
                  and t.custodian.kind == "pkcs11"]
        while not self._holds_key(token):
            if self.plan.confirm_all:
                raise HsmsignError(f"{token.custodian.token_name} of {token.custodian.name} is "
                                   f"no longer present; the ceremony needs it to {purpose}")
            self.ui.pause(f"Insert {token.custodian.token_name} again, held by "
                          f"{token.custodian.name}, to {purpose}; then press Enter")
            if token.custodian.kind == "pkcs11":
                token.store.rescan(others)

    def _holds_key(self, token: CustodianToken) -> bool:
        """Whether the token is there now, with the custodian's key (never a cached answer)."""
        if token.custodian.kind == "yubikey":
            from hsmsign.keystore.yubikey import YubiKeyStore

            return token.custodian.yubikey_serial in YubiKeyStore(self.secrets).serials()
        token.store.reset()  # its next use logs in again, with the PIN given before
        try:
            return token.keyid in token.store.keyids()
        except HsmsignError:
            return False

    def login(self, token: CustodianToken) -> None:
        """Log in to a custodian's token (a YubiKey: verify its PIN), asking again after a
        wrong PIN (never the last try)."""
        label = token.custodian.token_name
        variables = pin_variables(token.custodian)
        typed = not any(self.environ.get(v) for v in variables)
        for attempt in range(3):
            try:
                if token.custodian.kind == "yubikey":
                    token.store.check_pin()  # the PIN from the plan's variable or a prompt
                else:
                    self.secrets.pin(token.custodian.token_label, variables)
                    token.store.login()
                return
            except HsmsignError as e:
                # Ask again only for a typed PIN: a wrong PIN from the environment stays wrong.
                if not typed or not isinstance(e, WrongPin) or attempt == 2:
                    raise
                self.ui.screen("Wrong PIN", [("token", label), ("what happened", str(e))])

    # -- root keys -----------------------------------------------------------------------

    def generate_root_key(self, token: CustodianToken):
        """A root key made on the custodian's token; on a YubiKey with the plan's slot and
        policies, after refusing factory defaults, and attested."""
        alg = algorithm(self.plan.algorithm)
        if token.custodian.kind != "yubikey":
            record = token.store.generate("root", alg)
            self.created(record, label=token.custodian.token_label)
            token.keyid = record.keyid
            return record
        self._refuse_factory_defaults(token)
        record = token.store.generate("root", alg, self.plan.yubikey)
        self.created(record, serial=token.custodian.yubikey_serial)
        token.keyid = record.keyid
        token.attestation = self._attest(token)
        return record

    def created(self, record, *, label: str | None = None, serial: int | None = None) -> None:
        """A key now on a token (a PKCS#11 `label`, or a YubiKey's `serial`): listed, with the
        command that removes it, if the ceremony stops."""
        self.created_on_tokens.append(f"{record.keyid} on {record.location}")
        if serial is not None:
            self.removals.append(f"hsmsign key remove {record.keyid} --force   (with YubiKey "
                                 f"{serial} alone plugged in)")
        else:
            module = f" HSMSIGN_PKCS11_MODULE={self.plan.pkcs11_module}" if self.plan.pkcs11_module else ""
            self.removals.append(f"HSMSIGN_TOKEN_LABEL={label}{module} hsmsign "
                                 f"key remove {record.keyid} --force")

    def _refuse_factory_defaults(self, token: CustodianToken) -> None:
        """A root key must not sit behind a PIN, PUK or management key that everyone knows."""
        store, custodian = token.store, token.custodian
        defaults = store.factory_defaults()
        if not defaults:
            return
        what = ", ".join(defaults)
        serial = custodian.yubikey_serial
        if self.plan.confirm_all:
            raise HsmsignError(f"YubiKey {serial} of {custodian.name} still has the factory default "
                               f"{what}; run `hsmsign token setup --serial {serial}` before the "
                               "ceremony; nothing was created on it")
        self.ui.screen(f"YubiKey {serial}: factory defaults", [
            ("still the factory's", what),
            ("what now", "set a new PIN and PUK and a random management key (`token setup`)")])
        if not self.ui.confirm(f"Set up YubiKey {serial} of {custodian.name} now?"):
            self.transcript.record("confirmation", {"question": f"set up YubiKey {serial}",
                                                    "answer": "no"})
            raise CeremonyAborted(f"YubiKey {serial} keeps its factory default {what}; run "
                                  f"`hsmsign token setup --serial {serial}` and start again")
        done = store.setup()
        self.transcript.record("token setup", {"custodian": custodian.name, "serial": serial,
                                               "replaced": defaults, "done": done})

    def _attest(self, token: CustodianToken) -> dict:
        """The YubiKey's attestation of the new key, checked against Yubico's roots (and the
        plan's) and bound to the TUF key ID, as `key attest` does."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from hsmsign.keystore.attestation import check_attestation, read_trust_roots

        extra = read_trust_roots(self.plan.attestation_roots) if self.plan.attestation_roots else []
        slot_cert, device_cert, serial = token.store.attestation(token.keyid)
        result = check_attestation(slot_cert, device_cert, token.keyid, serial, extra_trust=extra)
        asked = (self.plan.yubikey.pin_policy, self.plan.yubikey.touch)
        if (result.pin_policy, result.touch_policy) != asked:
            raise HsmsignError(f"YubiKey {serial} attests PIN policy {result.pin_policy} and touch "
                               f"policy {result.touch_policy}, not the {asked[0]} and {asked[1]} "
                               "the plan asks for")
        pem = b"".join(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
                       for der in (slot_cert, device_cert))
        return {**result.to_json(), "pem": pem.decode(),
                "pem_sha256": hashlib.sha256(pem).hexdigest()}

    def attestation_entry(self, token: CustodianToken) -> dict:
        """What the transcript records of a token's attestation (all but the PEM itself)."""
        if not token.attestation:
            return {}
        return {"attestation": {k: v for k, v in token.attestation.items() if k != "pem"}}
