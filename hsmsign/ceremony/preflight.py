"""Checks of the host before the first key is made: offline, software versions, backup drives,
and every secret a run without a terminal will need."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hsmsign import __version__
from hsmsign.ceremony.plan import Custodian, Plan
from hsmsign.errors import HsmsignError
from hsmsign.keystore.base import StoreKind
from hsmsign.secrets import Secrets, passphrase_variables

MIN_FREE_BYTES = 10 * 1024 * 1024


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


def pin_variables(custodian: Custodian) -> list[str]:
    """Where a custodian's PIN comes from: the plan's variable, else HSMSIGN_PIN."""
    return [custodian.pin_env] if custodian.pin_env else ["HSMSIGN_PIN"]


def require_secrets(plan: Plan, secrets: Secrets, file_roles: Iterable[str]) -> None:
    """With no one to ask (no terminal), every PIN and passphrase must be in the
    environment before the first key is made, not found missing after it."""
    for c in (*plan.custodians, *plan.old_custodians):
        variables = pin_variables(c)
        if not secrets.can_get(variables):
            raise HsmsignError(f"no terminal to ask for {c.name}'s PIN, and {variables[0]} "
                               "is not set")
    for role in file_roles if plan.online_store == StoreKind.FILE else ():
        variables = passphrase_variables(role)
        if not secrets.can_get(variables):
            raise HsmsignError(f"no terminal to ask for the {role} key's passphrase, and "
                               f"{variables[0]} is not set")
