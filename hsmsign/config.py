"""Where hsmsign keeps things, and which PKCS#11 token it uses.

Home: `--home`, else `$HSMSIGN_HOME`, else `~/.hsmsign`. Token settings come from the command
line, else the environment, else `<home>/config.toml`:

    [pkcs11]
    module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "hsmsign"      # or token_serial = "..."
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hsmsign.errors import HsmsignError

# Searched in this order when no module is configured: a YubiKey first, then generic
# smart cards, then SoftHSM.
WELL_KNOWN_MODULES = (
    "/usr/lib/x86_64-linux-gnu/libykcs11.so",
    "/usr/lib/aarch64-linux-gnu/libykcs11.so",
    "/usr/local/lib/libykcs11.so",
    "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def resolve_home(explicit: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if explicit:
        home = Path(explicit)
    elif environ.get("HSMSIGN_HOME"):
        home = Path(environ["HSMSIGN_HOME"])
    else:
        home = Path("~/.hsmsign")
    return home.expanduser().absolute()


@dataclass(frozen=True)
class TokenConfig:
    """Which PKCS#11 module and token to use; `module=None` means "look in the usual places"."""

    module: str | None = None
    label: str | None = None
    serial: str | None = None
    explicit: bool = False  # configured by the user (not found by searching)
    enabled: bool = True  # False: no token at all (e.g. a ceremony's file-only staging home)
    pkcs11: bool = True  # False: no PKCS#11 module (a ceremony custodian's YubiKey alone)
    yubikeys: bool = True  # False: no YubiKey through PIV (a custodian's PKCS#11 token alone)

    def candidate_modules(self) -> list[str]:
        if not (self.enabled and self.pkcs11):
            return []
        if self.module:
            return [self.module]
        return [m for m in WELL_KNOWN_MODULES if os.path.exists(m)]


NO_TOKEN = TokenConfig(enabled=False)
YUBIKEYS_ONLY = TokenConfig(pkcs11=False)


# What hsmsign keeps in a home; a directory holding anything else is not one of its homes.
HOME_ENTRIES = {"private", "public", "config.toml", "yubikeys.json", "audit.jsonl", "kms.json"}
# What a crash may leave: a restore's staging directory, an atomic write's temp file.
_HOME_LEFTOVER = re.compile(r"^\.(hsmsign-.*|(config\.toml|yubikeys\.json)\..*\.tmp)$")


def ensure_home(home: Path) -> Path:
    """The home, 0700: made if missing, tightened if it holds only what hsmsign keeps there
    (`check_home`)."""
    from hsmsign.fsutil import ensure_private_dir

    check_home(home)
    return ensure_private_dir(home)


def check_home(home: Path) -> None:
    """A home that others may read and that holds other files is refused, never chmod-ed: a
    mistyped --home must not change the mode of someone's directory."""
    if home.is_dir() and home.stat().st_mode & 0o077:
        others = sorted(p.name for p in home.iterdir()
                        if p.name not in HOME_ENTRIES and not _HOME_LEFTOVER.match(p.name))
        if others:
            raise HsmsignError(
                f"{home} is open to others (mode {home.stat().st_mode & 0o777:04o}) and holds "
                f"files hsmsign did not make ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); if it is your hsmsign home, "
                f"chmod 700 it; else choose another --home")


def _require_only_yours(config_file: Path) -> None:
    """The config names a PKCS#11 module, which hsmsign loads as code (with PINs in its
    environment): refuse one that another user could have written, as ssh does its config."""
    for path in (config_file, config_file.parent):
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise HsmsignError(f"{path} could be changed by another user (its owner or mode); "
                               "hsmsign loads the module its config names: make it yours and "
                               f"not writable by others (chmod go-w {path})")


def load_token_config(home: Path, *, module: str | None = None,
                      environ: Mapping[str, str] | None = None) -> TokenConfig:
    environ = os.environ if environ is None else environ
    file_settings: dict = {}
    config_file = home / "config.toml"
    if config_file.exists():
        _require_only_yours(config_file)
        import tomllib

        try:
            file_settings = tomllib.loads(config_file.read_text()).get("pkcs11", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise HsmsignError(f"{config_file} is not valid TOML ({e}); fix or remove it") from None
    module = module or environ.get("HSMSIGN_PKCS11_MODULE") or file_settings.get("module")
    label = environ.get("HSMSIGN_TOKEN_LABEL") or file_settings.get("token_label")
    serial = environ.get("HSMSIGN_TOKEN_SERIAL") or file_settings.get("token_serial")
    return TokenConfig(
        module=module or None,
        label=label or None,
        serial=serial or None,
        explicit=bool(module or label or serial),
    )
