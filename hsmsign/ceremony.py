"""The guided offline root ceremony: several tokens, a threshold root, a signed transcript.

Steps: preflight, one root key per custodian token, online keys, metadata (each custodian
signs root), client-side verification, backups of the file keys, transcript. Everything is
staged in a work directory next to REPO and moved into place only when every step passed;
a failure or an abort leaves REPO and the home as they were and lists the keys created on
tokens (which cannot be un-generated) so the operator can remove them.

Nothing here prints or prompts: the CLI hands in a `CeremonyUI`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from hsmsign import __version__
from hsmsign.ceremony_plan import Custodian, Plan
from hsmsign.config import NO_TOKEN, YUBIKEYS_ONLY, TokenConfig, check_home, ensure_home, load_token_config
from hsmsign.errors import HsmsignError
from hsmsign.keys import DEFAULT_ALGORITHM, algorithm, tuf_key
from hsmsign.keystore.stores import KeyStores
from hsmsign.repository import HsmsignRepository
from hsmsign.secrets import Secrets, passphrase_variables
from hsmsign.signing import SigningService, signer_for
from hsmsign.transcript import Transcript
from hsmsign.repository.verification import verify

MIN_FREE_BYTES = 10 * 1024 * 1024
ATTESTATIONS = "attestations"  # REPO/attestations/<keyid>.pem: the YubiKeys' attestations


class CeremonyAborted(HsmsignError):
    """The operator said no, or a step failed; nothing was moved into place."""


class CeremonyUI(Protocol):
    def screen(self, title: str, rows: list[tuple[str, str]]) -> None: ...

    def tell(self, message: str) -> None: ...  # e.g. "Touch your YubiKey now", at once

    def confirm(self, question: str) -> bool: ...

    def pause(self, message: str) -> None: ...

    def ask(self, question: str) -> str: ...


# -- checks ---------------------------------------------------------------------------


def network_interfaces_up(sys_class_net: Path = Path("/sys/class/net")) -> list[str]:
    """Interfaces other than loopback that are up (an air-gapped laptop has none)."""
    up = []
    for iface in sorted(os.listdir(sys_class_net)) if sys_class_net.is_dir() else []:
        if iface == "lo":
            continue
        try:
            state = (sys_class_net / iface / "operstate").read_text().strip()
            flags = int((sys_class_net / iface / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if state == "up" or (state == "unknown" and flags & 0x1):
            up.append(iface)
    return up


def require_offline(plan: Plan) -> list[str]:
    """The interfaces up (allowed only for a rehearsal); an error when the laptop is online."""
    up = network_interfaces_up()
    if up and not plan.allow_network:
        raise HsmsignError(
            f"network interfaces are up ({', '.join(up)}); disconnect them (the ceremony is "
            "offline), or pass --allow-network for a rehearsal"
        )
    return up


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"hsmsign": __version__, "python": platform.python_version()}
    for name in ("tuf", "securesystemslib", "cryptography", "python-pkcs11", "asn1crypto"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_destination(path: Path) -> dict:
    """A backup destination must exist, be a writable directory and have room."""
    if not path.is_dir():
        raise HsmsignError(f"backup destination {path} is not a directory; mount the USB drive")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hsmsign-write-test-"):
            pass
    except OSError as e:
        raise HsmsignError(f"backup destination {path} is not writable ({e.strerror})") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise HsmsignError(f"backup destination {path} has only {free} bytes free")
    return {"path": str(path), "free_bytes": free}


def transcript_files(path: Path) -> tuple[Path, Path]:
    """The signed transcript (JSON) at `path` and its Markdown rendering beside it (`.md`)."""
    return path, path.with_suffix(".md")


def check_transcript_destination(path: Path, repo: Path) -> None:
    """A `--transcript FILE` the ceremony can write at the end, checked before the first key:
    a record of an earlier ceremony is never overwritten."""
    json_file, markdown = transcript_files(path)
    if json_file == markdown:
        raise HsmsignError(f"--transcript {path}: give the JSON file's name (its Markdown "
                           f"rendering is written beside it as {markdown.name})")
    for f in (json_file, markdown):
        if os.path.lexists(f):
            raise HsmsignError(f"{f} already exists (a transcript is never overwritten); "
                               "choose another --transcript")
    parent = path.parent.resolve()
    if parent == repo.resolve() and not repo.exists():
        return  # the repository the ceremony creates
    if not parent.is_dir():
        raise HsmsignError(f"--transcript {path}: {path.parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HsmsignError(f"--transcript {path}: {path.parent} is not writable")


def write_transcript(transcript: Transcript, path: Path) -> None:
    from hsmsign.fsutil import atomic_write

    json_file, markdown = transcript_files(path)
    atomic_write(json_file, json.dumps(transcript.to_json(), indent=2).encode() + b"\n", mode=0o644)
    atomic_write(markdown, transcript.to_markdown().encode(), mode=0o644)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the ceremony ---------------------------------------------------------------------


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


class RootCeremony:
    """One run of `hsmsign ceremony root`."""

    def __init__(self, repo: Path, home: Path, plan: Plan, ui: CeremonyUI, secrets: Secrets, *,
                 environ: Mapping[str, str] | None = None, force: bool = False,
                 transcript_file: Path | None = None):
        self.repo = repo
        self.transcript_file = transcript_file  # None: the default name inside REPO
        self.home = home
        self.plan = plan
        self.ui = ui
        self.secrets = secrets
        self.environ = os.environ if environ is None else environ
        self.force = force
        self.transcript = Transcript("root")
        self.created_on_tokens: list[str] = []  # "<keyid> on <token>", for an abort
        self.removals: list[str] = []  # how to remove each of them, as a command
        self.work: Path | None = None
        self.tokens: list[CustodianToken] = []
        self.backup_archives: list[Path] = []  # removed again if the ceremony stops after them

    # -- helpers -----------------------------------------------------------------------

    def confirm(self, question: str) -> None:
        if self.plan.confirm_all:
            self.transcript.record("confirmation", {"question": question, "answer": "yes (plan)"})
            return
        if not self.ui.confirm(question):
            self.transcript.record("confirmation", {"question": question, "answer": "no"})
            raise CeremonyAborted(f"aborted by the operator at: {question}")
        self.transcript.record("confirmation", {"question": question, "answer": "yes"})

    def _token_config(self, label: str) -> TokenConfig:
        base = load_token_config(self.home, module=self.plan.pkcs11_module, environ=self.environ)
        return TokenConfig(module=base.module, label=label, explicit=True)

    # -- the steps ---------------------------------------------------------------------

    def ask_custodians(self) -> None:
        """Names and tokens the plan does not give, asked of the operator."""
        while len(self.plan.custodians) < self.plan.tokens:
            i = len(self.plan.custodians) + 1
            name = self.ui.ask(f"Name of custodian {i} of {self.plan.tokens}:").strip()
            token = self.ui.ask(f"{name}'s token: yubikey:SERIAL, or the label of a PKCS#11 "
                                "token:").strip()
            if not token.startswith(("yubikey:", "pkcs11:")):
                token = f"pkcs11:token={token}"
            self.plan.custodians.append(Custodian(name, token))
            try:
                self.plan.check()
            except HsmsignError:
                self.plan.custodians.pop()
                raise

    def run(self) -> dict:
        self.ask_custodians()
        self.plan.check()
        self.preflight()
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.repo.name}.ceremony-",
                                          dir=self.repo.parent))
        try:
            staged_home = self.work / "home"
            staged_home.mkdir(mode=0o700)
            self.root_keys(staged_home)
            online = self.online_keys(staged_home)
            self.metadata(staged_home, online)
            self.verify_staged()
            backups = self.backups(staged_home)
            self.sign_transcript()
            return self.move_into_place(staged_home, backups)
        except BaseException as e:
            self.transcript.record("aborted", {"reason": str(e) or type(e).__name__,
                                               "created_on_tokens": self.created_on_tokens})
            for archive in self.backup_archives:  # a backup of keys that were never put in use
                archive.unlink(missing_ok=True)
            raise
        finally:
            for token in self.tokens:
                token.stores.close()
            if self.work is not None:
                shutil.rmtree(self.work, ignore_errors=True)

    def require_secrets(self, file_roles=("targets", "snapshot", "timestamp")) -> None:
        """With no one to ask (no terminal), every PIN and passphrase must be in the
        environment before the first key is made, not found missing after it."""
        for c in (*self.plan.custodians, *self.plan.old_custodians):
            variables = self._pin_variables(c)
            if not self.secrets.can_get(variables):
                raise HsmsignError(f"no terminal to ask for {c.name}'s PIN, and {variables[0]} "
                                   "is not set")
        for role in file_roles if self.plan.online_store == "file" else ():
            variables = passphrase_variables(role)
            if not self.secrets.can_get(variables):
                raise HsmsignError(f"no terminal to ask for the {role} key's passphrase, and "
                                   f"{variables[0]} is not set")

    def preflight(self) -> None:
        self.require_secrets()
        check_home(self.home)  # where the online keys go at the end
        rows = []
        up = require_offline(self.plan)
        rows.append(("network", f"UP: {', '.join(up)} (allowed for a rehearsal)" if up else "offline"))
        clock = datetime.now(timezone.utc).replace(microsecond=0)
        rows.append(("clock (UTC)", clock.isoformat()))
        versions = library_versions()
        rows.extend((name, v) for name, v in versions.items())
        if self.repo.exists() and (not self.repo.is_dir() or any(self.repo.iterdir())):
            raise HsmsignError(f"{self.repo} exists and is not empty; choose a new directory")
        if not self.repo.parent.is_dir():
            raise HsmsignError(f"{self.repo.parent} does not exist")
        if self.transcript_file is not None:
            check_transcript_destination(self.transcript_file, self.repo)
        destinations = [check_destination(d) for d in self.plan.backup_destinations]
        for d in destinations:
            rows.append(("backup to", f"{d['path']} ({d['free_bytes'] // (1 << 20)} MiB free)"))
        from hsmsign.backup import same_disk_warnings

        # The laptop's own disk holds the repository's parent: a drive there is not mounted.
        for warning in same_disk_warnings([Path(d["path"]) for d in destinations],
                                          self.repo.parent, "the repository"):
            rows.append(("WARNING", warning))
        rows.append(("threshold", f"{self.plan.threshold} of {self.plan.tokens} root keys"))
        for i, c in enumerate(self.plan.custodians, 1):
            rows.append((f"custodian {i}", f"{c.name}: {c.token}"))
        if self.plan.left_out:
            rows.append(("left out", f"{', '.join(self.plan.left_out)} (--tokens "
                                     f"{self.plan.tokens})"))
        if self.plan.operator or self.plan.witnesses:
            rows.append(("people", f"operator {self.plan.operator or '?'}; witnesses "
                                   f"{', '.join(self.plan.witnesses) or 'none'}"))
        rows.append(("plan", f"sha256 {self.plan.source_sha256}" if self.plan.source_sha256
                     else "from the command line"))
        present = self.tokens_present()
        rows.append(("tokens present", ", ".join(present) or "none yet (each is asked for in turn)"))
        self.ui.screen("1. Preflight", rows)
        self.transcript.record("preflight", {
            "network_up": up, "network_allowed": self.plan.allow_network, "clock": clock.isoformat(),
            "versions": versions, "backup_destinations": destinations, "tokens_present": present,
            "threshold": self.plan.threshold,
            "custodians": [{"name": c.name, "token": c.token} for c in self.plan.custodians],
            "left_out_of_the_plan": self.plan.left_out,
            "host": platform.node(), "operator": self.plan.operator,
            "witnesses": self.plan.witnesses, "plan_sha256": self.plan.source_sha256,
            "confirmations": "from the plan (rehearsal)" if self.plan.confirm_all else "typed",
            "expires_days": self.plan.expires,
        })
        self.confirm(f"Is the date and time shown ({clock:%Y-%m-%d %H:%M} UTC) correct?")

    def _custodian_stores(self, custodian: Custodian, staged_home: Path) -> KeyStores:
        """The staged home with this custodian's token alone (their YubiKey, or PKCS#11 token)."""
        if custodian.kind == "yubikey":
            stores = KeyStores(staged_home, self.secrets, YUBIKEYS_ONLY, force=self.force,
                               notify=self.ui.tell)
            stores.yubikey.serial = custodian.yubikey_serial
            stores.yubikey.pin_variables = self._pin_variables(custodian)
            return stores
        config = dataclasses.replace(self._token_config(custodian.token_label), yubikeys=False)
        return KeyStores(staged_home, self.secrets, config, force=self.force, notify=self.ui.tell)

    def tokens_present(self) -> list[str]:
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

    def _open_token(self, custodian: Custodian, index: int, staged_home: Path) -> CustodianToken:
        while True:
            stores = self._custodian_stores(custodian, staged_home)
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

    def _insert_token(self, custodian: Custodian, index: int, staged_home: Path) -> CustodianToken:
        """Ask for a custodian's token, find it, and log in to it."""
        if not self.plan.confirm_all:
            self.ui.pause(f"Insert token {index} of {self.plan.tokens}, held by {custodian.name} "
                          f"({custodian.token}), then press Enter")
        token = self._open_token(custodian, index, staged_home)
        self.tokens.append(token)
        self._login(token)
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

    def _pin_variables(self, custodian: Custodian) -> list[str]:
        return [custodian.pin_env] if custodian.pin_env else ["HSMSIGN_PIN"]

    def root_keys(self, staged_home: Path) -> None:
        for i, custodian in enumerate(self.plan.custodians, 1):
            token = self._insert_token(custodian, i, staged_home)
            record = self._generate_root_key(token)
            rows = [("token", record.location), ("key ID", record.keyid),
                    ("algorithm", record.algorithm)]
            if token.attestation is not None:
                a = token.attestation
                rows.append(("attested", f"generated on YubiKey {a['serial']} (firmware "
                                         f"{a['firmware']}), PIN policy {a['pin_policy']}, "
                                         f"touch policy {a['touch_policy']}"))
            rows.append(("write down", f"the first 16 characters: {record.keyid[:16]}"))
            self.ui.screen(f"2. Root key {i} of {self.plan.tokens}: {custodian.name}", rows)
            self.transcript.record("root key", {
                "custodian": custodian.name, "token": custodian.token,
                "location": record.location, "keyid": record.keyid, "algorithm": record.algorithm,
                "public_key_sha256": hashlib.sha256(
                    tuf_key(token.store.public_key(record.keyid)).keyval["public"].encode()
                ).hexdigest(),
                **({"attestation": {k: v for k, v in token.attestation.items() if k != "pem"}}
                   if token.attestation else {}),
            })
            self.confirm(f"Has {custodian.name} written down key ID {record.keyid[:16]}...?")

    def _generate_root_key(self, token: CustodianToken):
        """A root key made on the custodian's token; on a YubiKey with the plan's slot and
        policies, after refusing factory defaults, and attested."""
        alg = algorithm(self.plan.algorithm)
        if token.custodian.kind != "yubikey":
            record = token.store.generate("root", alg)
            self._created(record, label=token.custodian.token_label)
            token.keyid = record.keyid
            return record
        self._refuse_factory_defaults(token)
        record = token.store.generate("root", alg, self.plan.yubikey)
        self._created(record, serial=token.custodian.yubikey_serial)
        token.keyid = record.keyid
        token.attestation = self._attest(token)
        return record

    def _created(self, record, *, label: str | None = None, serial: int | None = None) -> None:
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

        from hsmsign.keystore.attestation import read_trust_roots, verify_attestation

        extra = read_trust_roots(self.plan.attestation_roots) if self.plan.attestation_roots else []
        slot_cert, device_cert, serial = token.store.attestation(token.keyid)
        result = verify_attestation(slot_cert, device_cert, token.keyid, extra_trust=extra)
        if result.serial is not None and result.serial != serial:
            raise HsmsignError(f"the attestation names YubiKey {result.serial}, but it was read "
                               f"from YubiKey {serial}")
        asked = (self.plan.yubikey.pin_policy, self.plan.yubikey.touch)
        if (result.pin_policy, result.touch_policy) != asked:
            raise HsmsignError(f"YubiKey {serial} attests PIN policy {result.pin_policy} and touch "
                               f"policy {result.touch_policy}, not the {asked[0]} and {asked[1]} "
                               "the plan asks for")
        pem = b"".join(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
                       for der in (slot_cert, device_cert))
        return {**result.to_json(), "pem": pem.decode(),
                "pem_sha256": hashlib.sha256(pem).hexdigest()}

    def _login(self, token: CustodianToken) -> None:
        """Log in to a custodian's token (a YubiKey: verify its PIN), asking again after a
        wrong PIN (never the last try)."""
        label = token.custodian.token_name
        variables = self._pin_variables(token.custodian)
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
                if not typed or "wrong PIN" not in str(e) or attempt == 2:
                    raise
                self.ui.screen("Wrong PIN", [("token", label), ("what happened", str(e))])

    def _online_stores(self, staged_home: Path) -> KeyStores:
        if self.plan.online_store == "token":
            return KeyStores(staged_home, self.secrets, self._token_config(self.plan.online_token),
                             force=self.force)
        return KeyStores(staged_home, self.secrets, NO_TOKEN)

    def online_keys(self, staged_home: Path) -> dict[str, str]:
        stores = self._online_stores(staged_home)
        keys = {}
        for role in ("targets", "snapshot", "timestamp"):
            record, _ = stores.generate(role, None, algorithm(DEFAULT_ALGORITHM), self.plan.online_store)
            keys[role] = record.keyid
            if record.store == "token":
                self._created(record, label=self.plan.online_token)
        self.ui.screen("3. Online keys", [(role, f"{keyid} ({self.plan.online_store})")
                                          for role, keyid in keys.items()])
        self.transcript.record("online keys", {"store": self.plan.online_store, "keys": keys})
        return keys

    def metadata(self, staged_home: Path, online: dict[str, str]) -> None:
        assert self.work is not None
        source = self._online_stores(staged_home)
        root_keys = [tuf_key(t.store.public_key(t.keyid)) for t in self.tokens]
        role_keys = {role: [tuf_key(source.public_key(keyid))] for role, keyid in online.items()}
        repo = HsmsignRepository(self.work / "repo", SigningService(source))
        repo.init(root_keys, self.plan.threshold, role_keys, self.plan.expires)
        repo.commit()
        # Each custodian signs 1.root.json with their own token, one after another.
        signed = []
        for token in self.tokens:
            if len(signed) >= self.plan.threshold and not self.plan.confirm_all:
                if not self.ui.confirm(f"The threshold is reached. Should {token.custodian.name} sign too?"):
                    continue
            self.require_inserted(token, "sign the root")
            staged = HsmsignRepository(self.work / "repo",
                                       SigningService(token.stores, only={token.keyid}))
            report = staged.sign_current("root")
            staged.commit()
            signed.append(token.keyid)
            self.transcript.record("root signature", {
                "custodian": token.custodian.name, "keyid": token.keyid,
                "signatures": f"{len(report.valid)}/{report.threshold}",
            })
        self.ui.screen("4. Metadata", [("root", f"signed by {len(signed)} of {self.plan.tokens}; "
                                               f"threshold {self.plan.threshold}")])

    def verify_staged(self) -> None:
        assert self.work is not None
        result = verify(HsmsignRepository(self.work / "repo"))
        paths = sorted((self.work / "repo" / "metadata").iterdir())
        files = {p.name: sha256_file(p) for p in paths}
        self.ui.screen("5. Verified as a TUF client would", [
            (role, f"v{v} ok") for role, v in result.roles.items()])
        self.transcript.record("verify", {"roles": result.roles, "metadata_sha256": files,
                                          "signed_sha256": {p.name: signed_sha256(p.read_bytes())
                                                            for p in paths}})

    def backups(self, staged_home: Path) -> list[dict]:
        if not self.plan.backup_destinations:
            self.transcript.record("backups", {"destinations": [], "note": "no backup destination"})
            return []
        from hsmsign.backup import backup_file_keys

        results = backup_file_keys(staged_home, self.plan.backup_destinations, self.secrets)
        self.backup_archives = [Path(r["path"]) for r in results]
        # Whole names and digests, in the value column (which wraps): to be read aloud.
        rows = [(f"copy {i}", f"{r['path']} ({r['size']} bytes, read back and verified)")
                for i, r in enumerate(results, 1)]
        rows += [("sha256", digest) for digest in sorted({r["sha256"] for r in results})]
        self.ui.screen("6. Backups", rows)
        self.transcript.record("backups", {"archives": results})
        return results

    def write_attestations(self) -> None:
        """Each YubiKey's attestation (slot certificate, then the device's), for anyone to check
        later with `hsmsign key attest KEYID --certificate F --repo REPO`."""
        from hsmsign.fsutil import atomic_write

        for token in self.tokens:
            if token.attestation is not None:
                (self.repo / ATTESTATIONS).mkdir(exist_ok=True)
                atomic_write(self.repo / ATTESTATIONS / f"{token.keyid}.pem",
                             token.attestation["pem"].encode(), mode=0o644)

    def sign_transcript(self, root_version: int = 1) -> None:
        self.transcript.record("complete", {"root_keys": [t.keyid for t in self.tokens],
                                            "threshold": self.plan.threshold,
                                            "root_version": root_version})
        for token in self.tokens:
            self.require_inserted(token, "sign the transcript")
            signer = signer_for(token.stores, token.keyid)
            self.transcript.sign(signer)

    def move_into_place(self, staged_home: Path, backups: list[dict]) -> dict:
        """Only now does anything appear in REPO and the home."""
        assert self.work is not None
        from hsmsign.fsutil import atomic_write, ensure_private_dir

        if self.repo.exists() and (not self.repo.is_dir() or any(self.repo.iterdir())):
            raise HsmsignError(f"{self.repo} is no longer empty (something was written there "
                               "during the ceremony); nothing was moved")
        staged_keys = sorted((staged_home / "private").glob("*.key")) if (staged_home / "private").is_dir() else []
        for key in staged_keys:
            if (self.home / "private" / key.name).exists():
                raise HsmsignError(f"key {key.stem} is already in {self.home}; nothing was moved")
        if self.repo.exists():
            self.repo.rmdir()  # checked empty in preflight
        os.replace(self.work / "repo", self.repo)
        for sub in ("private", "public"):
            if not (staged_home / sub).is_dir():
                continue
            ensure_home(self.home)
            ensure_private_dir(self.home / sub)
            for f in sorted((staged_home / sub).iterdir()):
                atomic_write(self.home / sub / f.name, f.read_bytes())
        self.write_attestations()
        transcript = self.transcript_file or self.repo / "ceremony-transcript.json"
        write_transcript(self.transcript, transcript)
        return {"repository": str(self.repo), "transcript": str(transcript),
                "root_keys": [t.keyid for t in self.tokens], "threshold": self.plan.threshold,
                "backups": backups, "digest": self.transcript.digest}


def signed_sha256(metadata: bytes) -> str | None:
    """SHA-256 of a metadata file's canonical `signed` part: the same however many
    signatures it has."""
    from securesystemslib.formats import encode_canonical

    try:
        return hashlib.sha256(encode_canonical(json.loads(metadata)["signed"]).encode()).hexdigest()
    except (ValueError, KeyError, TypeError):
        return None


def verify_transcript(path: Path, repo: Path) -> dict:
    """The chain is intact, the root keys of REPO signed it, and the files it lists match."""
    try:
        transcript = Transcript.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise HsmsignError(f"cannot read transcript {path}: {e}") from None
    transcript.check_chain()
    repository = HsmsignRepository(repo)
    repository.require()
    complete = next((e for e in transcript.entries if e["step"] == "complete"), None)
    if complete is None:
        raise HsmsignError("the transcript has no 'complete' entry: the ceremony did not finish")
    root_version = int(complete["data"].get("root_version", 1))
    root_name = f"{root_version}.root.json"
    root = repository.read_file(root_name, "root")
    keys, threshold = repository.role_keys("root", root)
    signed_by = transcript.check_signatures(keys, threshold)
    verified = next((e for e in transcript.entries if e["step"] == "verify"), None)
    replaced = []
    if verified is not None:
        signed = verified["data"].get("signed_sha256", {})
        for name, digest in verified["data"]["metadata_sha256"].items():
            path_on_disk = repository.metadata_dir / name
            if path_on_disk.exists() and sha256_file(path_on_disk) == digest:
                continue
            if name == "timestamp.json" and path_on_disk.exists():  # replaced by design
                replaced.append(name)
                continue
            if path_on_disk.exists() and (
                    signed_sha256(path_on_disk.read_bytes()) == signed.get(name)
                    or (name == root_name and name not in signed)):
                continue  # the same metadata; signatures were added later (`hsmsign sign`)
            raise HsmsignError(f"metadata/{name} is not the file the ceremony wrote")
    for entry in transcript.entries:
        attestation = entry["data"].get("attestation") if entry["step"] == "root key" else None
        if attestation:
            name = f"{ATTESTATIONS}/{entry['data']['keyid']}.pem"
            on_disk = repo / name
            if not on_disk.exists() or sha256_file(on_disk) != attestation["pem_sha256"]:
                raise HsmsignError(f"{name} is not the attestation the ceremony recorded")
    return {"entries": len(transcript.entries), "digest": transcript.digest,
            "signed_by": signed_by, "threshold": threshold, "replaced_since": replaced}


class RootRotation(RootCeremony):
    """`hsmsign ceremony rotate-root`: a new root version with new custodian keys.

    The new root is signed by the new keys and by the old keys of the `old_custodian` tokens
    present, so that a client trusting the old root follows the rotation. A custodian whose
    token already holds a key of the current root keeps it. Only the new `N.root.json` (and
    the transcript) is written into REPO, after the whole chain verifies from `1.root.json`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transcript = Transcript("rotate-root")
        self.old_tokens: list[CustodianToken] = []

    def run(self) -> dict:
        current = HsmsignRepository(self.repo)
        verify(current)  # rotate from a repository that verifies, nothing else
        self.old_root = current.open("root")
        self.ask_custodians()
        self.plan.check()
        self.preflight()
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.repo.name}.rotation-", dir=self.repo.parent))
        try:
            staged_home = self.work / "home"
            staged_home.mkdir(mode=0o700)
            shutil.copytree(self.repo / "metadata", self.work / "repo" / "metadata")
            if (self.repo / "hsmsign.json").exists():
                shutil.copy(self.repo / "hsmsign.json", self.work / "repo" / "hsmsign.json")
            self.root_keys(staged_home)
            self.old_custodian_tokens(staged_home)
            version = self.new_root(staged_home)
            self.verify_rotation(version)
            self.sign_transcript(version)
            return self.write_root(version)
        except BaseException as e:
            self.transcript.record("aborted", {"reason": str(e) or type(e).__name__,
                                               "created_on_tokens": self.created_on_tokens})
            raise
        finally:
            for token in (*self.tokens, *self.old_tokens):
                token.stores.close()
            shutil.rmtree(self.work, ignore_errors=True)

    def preflight(self) -> None:
        self.require_secrets(file_roles=())
        if self.transcript_file is not None:
            check_transcript_destination(self.transcript_file, self.repo)
        old_keys = sorted(self.old_root.signed.roles["root"].keyids)
        self.ui.screen("1. Preflight: rotating root", [
            ("repository", str(self.repo)),
            ("current root", f"v{self.old_root.signed.version}, "
                             f"{self.old_root.signed.roles['root'].threshold} of {len(old_keys)}"),
            *((f"old key {i}", k) for i, k in enumerate(old_keys, 1)),
            ("new threshold", f"{self.plan.threshold} of {self.plan.tokens}"),
        ])
        up = require_offline(self.plan)
        self.transcript.record("preflight", {
            "repository": str(self.repo), "network_up": up, "versions": library_versions(),
            "current_root_version": self.old_root.signed.version, "old_root_keys": old_keys,
            "threshold": self.plan.threshold,
            "custodians": [{"name": c.name, "token": c.token} for c in self.plan.custodians],
            "old_custodians": [{"name": c.name, "token": c.token} for c in self.plan.old_custodians],
        })
        self.confirm(f"Rotate the root of {self.repo} (v{self.old_root.signed.version}) now?")

    def root_keys(self, staged_home: Path) -> None:
        """Keep a custodian's current root key when their token has one; else make a new one."""
        old_keys = set(self.old_root.signed.roles["root"].keyids)
        for i, custodian in enumerate(self.plan.custodians, 1):
            token = self._insert_token(custodian, i, staged_home)
            kept = [k for k in token.store.keyids() if k in old_keys]
            if kept:
                token.keyid = kept[0]
                action = "kept"
            else:
                self._generate_root_key(token)
                action = "generated"
            self.ui.screen(f"2. Root key {i} of {self.plan.tokens}: {custodian.name}",
                           [("key ID", token.keyid), ("", action)])
            self.transcript.record("root key", {
                "custodian": custodian.name, "token": custodian.token, "keyid": token.keyid,
                "action": action,
                **({"attestation": {k: v for k, v in token.attestation.items() if k != "pem"}}
                   if token.attestation else {}),
            })

    def old_custodian_tokens(self, staged_home: Path) -> None:
        old_keys = set(self.old_root.signed.roles["root"].keyids)
        for i, custodian in enumerate(self.plan.old_custodians, 1):
            if not self.plan.confirm_all:
                self.ui.pause(f"Insert the old root token of {custodian.name}, then press Enter")
            token = self._open_token(custodian, i, staged_home)
            held = [k for k in token.store.keyids() if k in old_keys]
            if not held:
                raise HsmsignError(f"the token of {custodian.name} holds none of the current root keys")
            self._login(token)
            token.keyid = held[0]
            self.old_tokens.append(token)
            self.transcript.record("old root key", {"custodian": custodian.name, "keyid": token.keyid})

    def new_root(self, staged_home: Path) -> int:
        assert self.work is not None
        nobody = KeyStores(staged_home, self.secrets, NO_TOKEN)
        staged = HsmsignRepository(self.work / "repo", SigningService(nobody))
        new_keys = [tuf_key(t.store.public_key(t.keyid)) for t in self.tokens]
        with staged.edit_root() as root:
            for keyid in list(root.roles["root"].keyids):
                if keyid not in {k.keyid for k in new_keys}:
                    root.revoke_key(keyid, "root")
            for key in new_keys:
                if key.keyid not in root.roles["root"].keyids:
                    root.add_key(key, "root")
            root.roles["root"].threshold = self.plan.threshold
        staged.commit()
        version = staged.open("root").signed.version
        signers = {t.keyid: t for t in (*self.tokens, *self.old_tokens)}
        for keyid, token in signers.items():
            self.require_inserted(token, "sign the new root")
            again = HsmsignRepository(self.work / "repo", SigningService(token.stores, only={keyid}))
            again.sign_current("root")
            again.commit()
            reports = again.reports
            self.transcript.record("root signature", {
                "custodian": token.custodian.name, "keyid": keyid,
                "new_keys": f"{len(reports['root'].valid)}/{reports['root'].threshold}",
                "old_keys": (f"{len(reports['root (previous keys)'].valid)}/"
                             f"{reports['root (previous keys)'].threshold}"),
            })
        return version

    def verify_rotation(self, version: int) -> None:
        assert self.work is not None
        staged = HsmsignRepository(self.work / "repo")
        from_first = verify(staged)
        from_old = verify(staged, (self.repo / "metadata" /
                                   f"{self.old_root.signed.version}.root.json").read_bytes())
        name = f"{version}.root.json"
        digest = sha256_file(self.work / "repo" / "metadata" / name)
        self.ui.screen("3. Verified", [("from 1.root.json", f"root v{from_first.root_version} ok"),
                                       ("from the old root", f"root v{from_old.root_version} ok")])
        self.transcript.record("verify", {"roles": from_first.roles, "metadata_sha256": {name: digest},
                                          "followed_from_old_root": True})

    def write_root(self, version: int) -> dict:
        from hsmsign.fsutil import atomic_write

        assert self.work is not None
        name = f"{version}.root.json"
        atomic_write(self.repo / "metadata" / name, (self.work / "repo" / "metadata" / name).read_bytes(),
                     mode=0o644)
        self.write_attestations()
        transcript = (self.transcript_file
                      or self.repo / f"ceremony-rotate-root-{version}-transcript.json")
        write_transcript(self.transcript, transcript)
        return {"repository": str(self.repo), "transcript": str(transcript), "root_version": version,
                "root_keys": [t.keyid for t in self.tokens], "threshold": self.plan.threshold,
                "digest": self.transcript.digest}
