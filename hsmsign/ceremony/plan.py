"""The ceremony's plan: who holds which token, the threshold, expiry, backups, confirmations.

Read from TOML and checked strictly: a key the plan does not know (a typo such as
`[[custodain]]` or `threshhold`) or a value of the wrong type (`all = "false"`) is an error
naming it, never a default that quietly changes the ceremony.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hsmsign.errors import HsmsignError
from hsmsign.keys import DEFAULT_ALGORITHM
from hsmsign.keystore.base import StoreKind
from hsmsign.keystore.yubikey import PIN_POLICY_CHOICES, TOUCH_CHOICES, YubiKeyOptions, parse_serial
from hsmsign.repository import DEFAULT_EXPIRY_DAYS

_CUSTODIAN = {"name": str, "token": str, "pin_env": str}
# What a plan may hold, and of which type: a dict is a table, [dict] an array of tables.
PLAN_SCHEMA: dict = {
    "operator": str,
    "witnesses": [str],
    "threshold": int,
    "algorithm": str,
    "allow_network": bool,
    "custodian": [_CUSTODIAN],
    "old_custodian": [_CUSTODIAN],
    "expires": {role: float for role in DEFAULT_EXPIRY_DAYS},
    "online_keys": {"store": str, "token": str},
    "backup": {"destinations": [str]},
    "confirm": {"all": bool},
    "pkcs11": {"module": str},
    "yubikey": {"slot": str, "touch": str, "pin_policy": str, "attestation_roots": str},
}
_TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def check_schema(data: dict, schema: dict, where: str = "") -> None:
    """HsmsignError naming the first key `schema` does not know, or a value of another type."""
    for key, value in data.items():
        name = f"{where}{key}"
        if key not in schema:
            raise HsmsignError(f"plan: unknown key {name!r}; the plan knows "
                               f"{', '.join(where + k for k in schema)}")
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise HsmsignError(f"plan: {name} must be a table ([{name}])")
            check_schema(value, expected, f"{name}.")
        elif isinstance(expected, list):
            if not isinstance(value, list):
                raise HsmsignError(f"plan: {name} must be a list")
            for item in value:
                if isinstance(expected[0], dict):
                    if not isinstance(item, dict):
                        raise HsmsignError(f"plan: every {name} must be a table ([[{name}]])")
                    check_schema(item, expected[0], f"{name}.")
                elif not isinstance(item, expected[0]):
                    raise HsmsignError(f"plan: every entry of {name} must be "
                                       f"{_TYPE_NAMES[expected[0]]}")
        elif not _is(value, expected):
            raise HsmsignError(f"plan: {name} must be {_TYPE_NAMES[expected]}, not {value!r}")


def _is(value, expected: type) -> bool:
    if isinstance(value, bool):  # TOML's true is no number
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


@dataclass
class Custodian:
    name: str
    token: str  # "pkcs11:token=LABEL" or "yubikey:SERIAL"
    pin_env: str | None = None

    @property
    def kind(self) -> str:
        kind = self.token.partition(":")[0]
        if kind not in ("pkcs11", "yubikey"):
            raise HsmsignError(f"custodian {self.name}: write the token as pkcs11:token=LABEL or "
                               f"yubikey:SERIAL, not {self.token!r}")
        return kind

    @property
    def yubikey_serial(self) -> int:
        serial = parse_serial(self.token.partition(":")[2]) if self.kind == "yubikey" else None
        if serial is None:
            raise HsmsignError(f"custodian {self.name}: write the YubiKey as yubikey:SERIAL")
        return serial

    @property
    def token_name(self) -> str:
        """How screens and the transcript name the token."""
        return f"YubiKey {self.yubikey_serial}" if self.kind == "yubikey" else f"token {self.token_label!r}"

    @property
    def token_label(self) -> str:
        kind, _, rest = self.token.partition(":")
        if kind != "pkcs11":
            raise HsmsignError(f"custodian {self.name}: token {self.token!r} is not a PKCS#11 token")
        fields = dict(part.split("=", 1) for part in rest.split(";") if "=" in part)
        if "token" not in fields:
            raise HsmsignError(f"custodian {self.name}: write the token as pkcs11:token=LABEL")
        return fields["token"]


@dataclass
class Plan:
    threshold: int
    custodians: list[Custodian]
    expires: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EXPIRY_DAYS))
    online_store: str = "file"
    online_token: str = ""  # label of the token for online keys when online_store is "token"
    backup_destinations: list[Path] = field(default_factory=list)
    confirm_all: bool = False
    allow_network: bool = False
    algorithm: str = DEFAULT_ALGORITHM
    pkcs11_module: str | None = None
    wanted_tokens: int = 0  # custodians to have; those the plan does not name are asked for
    yubikey: YubiKeyOptions = field(default_factory=YubiKeyOptions)  # slot and policies
    attestation_roots: Path | None = None  # more trusted roots (a rehearsal's test CA)
    old_custodians: list[Custodian] = field(default_factory=list)  # rotation: sign with old keys
    left_out: list[str] = field(default_factory=list)  # custodians of the plan --tokens drops
    operator: str = ""  # who types the commands (for the transcript)
    witnesses: list[str] = field(default_factory=list)
    source_sha256: str = ""  # of the plan file, so that the transcript names the plan it ran

    @property
    def tokens(self) -> int:
        return max(len(self.custodians), self.wanted_tokens)

    def check(self) -> None:
        if not self.tokens:
            raise HsmsignError("the ceremony needs at least one custodian token")
        if not self.threshold:
            raise HsmsignError("the plan gives no threshold: add threshold = K (the root keys "
                               "needed to sign), or pass --threshold K")
        if not 1 <= self.threshold <= self.tokens:
            raise HsmsignError(
                f"threshold {self.threshold} is not between 1 and the {self.tokens} tokens"
            )
        for c in (*self.custodians, *self.old_custodians):
            c.token_name  # noqa: B018 - raises on a malformed token
        if self.yubikey.touch not in TOUCH_CHOICES or self.yubikey.pin_policy not in PIN_POLICY_CHOICES:
            raise HsmsignError(f"yubikey.touch must be one of {', '.join(TOUCH_CHOICES)} and "
                               f"yubikey.pin_policy one of {', '.join(PIN_POLICY_CHOICES)}")
        names = [c.name for c in self.custodians]
        if len(set(names)) != len(names):
            raise HsmsignError("custodian names must be different")
        tokens = [c.token for c in self.custodians]
        if len(set(tokens)) != len(tokens):
            raise HsmsignError("each custodian needs a token of their own")
        for role, days in self.expires.items():
            if days <= 0:
                raise HsmsignError(f"plan: expires.{role} must be a positive number of days")
        if self.online_store not in (StoreKind.FILE, StoreKind.TOKEN):
            raise HsmsignError("online_keys.store must be 'file' or 'token'")
        if self.online_store == StoreKind.TOKEN and not self.online_token:
            raise HsmsignError("online_keys.store = 'token' needs online_keys.token = 'LABEL'")


def load_plan(path: Path | None, *, threshold: int | None, tokens: int | None,
              backup_to: list[Path], allow_network: bool) -> Plan:
    """The plan file, with the command line winning over it."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise HsmsignError(f"cannot read plan {path}: {e}") from None
        check_schema(data, PLAN_SCHEMA)
    custodians = [Custodian(c["name"], c["token"], c.get("pin_env"))
                  for c in data.get("custodian", [])
                  if isinstance(c, dict) and "name" in c and "token" in c]
    if len(custodians) != len(data.get("custodian", [])):
        raise HsmsignError("every [[custodian]] in the plan needs a name and a token")
    old_custodians = [Custodian(c["name"], c["token"], c.get("pin_env"))
                      for c in data.get("old_custodian", [])
                      if isinstance(c, dict) and "name" in c and "token" in c]
    if len(old_custodians) != len(data.get("old_custodian", [])):
        raise HsmsignError("every [[old_custodian]] in the plan needs a name and a token")
    left_out = []
    if tokens is not None:  # the command line wins, in the open: preflight shows who is left out
        custodians, left_out = custodians[:tokens], custodians[tokens:]
    yubikey = data.get("yubikey", {})
    defaults = YubiKeyOptions()
    expires = dict(DEFAULT_EXPIRY_DAYS)
    expires.update({k: float(v) for k, v in data.get("expires", {}).items()})
    plan = Plan(
        threshold=threshold if threshold is not None else int(data.get("threshold", 0) or 0),
        custodians=custodians,
        expires=expires,
        online_store=data.get("online_keys", {}).get("store", "file"),
        online_token=data.get("online_keys", {}).get("token", ""),
        backup_destinations=[*backup_to] or [Path(p) for p in data.get("backup", {}).get("destinations", [])],
        confirm_all=bool(data.get("confirm", {}).get("all", False)),
        allow_network=allow_network or bool(data.get("allow_network", False)),
        algorithm=data.get("algorithm", DEFAULT_ALGORITHM),
        pkcs11_module=data.get("pkcs11", {}).get("module"),
        wanted_tokens=tokens or 0,
        left_out=[c.name for c in left_out],
        operator=data.get("operator", ""),
        witnesses=list(data.get("witnesses", [])),
        source_sha256=hashlib.sha256(path.read_bytes()).hexdigest() if path else "",
        old_custodians=old_custodians,
        yubikey=YubiKeyOptions(slot=str(yubikey.get("slot", defaults.slot)).lower(),
                               touch=yubikey.get("touch", defaults.touch),
                               pin_policy=yubikey.get("pin_policy", defaults.pin_policy)),
        attestation_roots=(Path(yubikey["attestation_roots"]).expanduser()
                           if yubikey.get("attestation_roots") else None),
    )
    if plan.confirm_all and len(plan.custodians) < plan.tokens:
        raise HsmsignError(f"--tokens {plan.tokens}: the plan names only {len(plan.custodians)} "
                           "custodian(s); add them to the plan")
    plan.check()
    return plan
