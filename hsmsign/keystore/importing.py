"""Reading keys written elsewhere: single PEM files and whole notary / `docker trust` dirs.

Every layout notary has written is understood: `private/<id>.key` with `role:`/`gun:` headers
(current), `private/root_keys/<id>[_root].key` and `private/tuf_keys/<gun>/<id>[_<role>].key`
(0.1 / 0.3). A key keeps the passphrase it was written with (the role's variable or prompt).
Import is all or nothing: every file is decrypted before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hsmsign import pkcs8
from hsmsign.errors import HsmsignError
from hsmsign.keys import algorithm_of, key_id, normalize_role
from hsmsign.keystore.base import StoreKind
from hsmsign.keystore.stores import KeyStores

KEY_SUFFIXES = (".key", ".pem")
_NOTARY_NAME = re.compile(r"^[0-9a-f]{64}(?:_(?P<role>[A-Za-z0-9._-]+))?$")


@dataclass(frozen=True)
class ImportResult:
    path: str
    keyid: str
    role: str
    gun: str | None
    algorithm: str
    action: str  # "imported", "already present"
    store: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def key_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in KEY_SUFFIXES)
    raise HsmsignError(f"{path} does not exist")


def _layout_role_and_gun(path: Path) -> tuple[str | None, str | None]:
    """What notary's directory layout says of a file's role and GUN."""
    match = _NOTARY_NAME.match(path.stem)
    role = match.group("role") if match else None
    parts = path.parts
    gun = None
    if "tuf_keys" in parts:
        below = parts[parts.index("tuf_keys") + 1:-1]
        gun = "/".join(below) or None
    elif "root_keys" in parts:
        role = role or "root"
    return role, gun


def _read(stores: KeyStores, path: Path, role: str | None, gun: str | None, *,
          shown: str, outcome: str):
    try:
        data = path.read_bytes()
        block = pkcs8.read_private_key_pem(data)
    except OSError as e:
        raise HsmsignError(f"cannot read {path}: {e.strerror}") from None
    except pkcs8.KeyFormatError as e:
        raise HsmsignError(f"{path} is not a private key file ({e})") from None
    headers = {k.lower(): v for k, v in block.headers.items()}
    layout_role, layout_gun = _layout_role_and_gun(path)
    # What the file says wins; --role/--gun fill in what it does not say.
    file_role = headers.get("role") or layout_role
    if role and file_role and normalize_role(role) != normalize_role(file_role):
        raise HsmsignError(f"{path} is a {file_role} key; --role {role} contradicts it")
    role = file_role or role
    if not role:
        raise HsmsignError(f"cannot tell the role of {path}; pass --role")
    role = normalize_role(role)
    file_gun = headers.get("gun") or layout_gun
    if gun and file_gun and gun != file_gun:
        raise HsmsignError(f"{path} belongs to GUN {file_gun}; --gun {gun} contradicts it")
    gun = file_gun or gun

    def attempt(passphrase: str | None):
        try:
            return pkcs8.load_private_key(data, passphrase.encode() if passphrase else None)
        except pkcs8.WrongPassphrase:
            return None
        except pkcs8.KeyFormatError as e:
            raise HsmsignError(f"cannot import {path}: {e}") from None

    passphrase = None
    if block.encrypted:
        def unlocked(candidate: str):
            key = attempt(candidate)
            return None if key is None else (key, candidate)

        try:
            key, passphrase = stores.secrets.unlock(role, f"{role} key {shown}", unlocked)
        except HsmsignError as e:
            raise HsmsignError(f"{e}; {outcome}") from None
    else:
        key = attempt(None)
    algorithm_of(key.public_key())  # refuse keys TUF cannot use before writing anything
    return key, role, gun, passphrase


def import_keys(stores: KeyStores, path: Path, *, role: str | None = None, gun: str | None = None,
                store: str = StoreKind.FILE, shown_from: Path | None = None,
                outcome: str = "nothing imported") -> list[ImportResult]:
    """Import one key file or a whole trust dir; nothing is written unless every file reads.

    Messages name a file by its full path, or relative to `shown_from`; a wrong passphrase
    ends with `outcome`."""
    files = key_files(path)
    if not files:
        raise HsmsignError(f"no key files (*.key, *.pem) in {path}")
    single = path.is_file()
    target = stores.store(store)
    present = set(target.keyids())
    planned = []
    for file in files:
        shown = str(file if shown_from is None else file.relative_to(shown_from))
        key, file_role, file_gun, passphrase = _read(stores, file, role, gun, shown=shown,
                                                     outcome=outcome)
        keyid = key_id(key.public_key())
        if keyid in present and single:
            raise HsmsignError(f"key {keyid} is already in the {target.kind} store; nothing imported")
        planned.append((file, key, keyid, file_role, file_gun, passphrase))
    results = []
    for file, key, keyid, file_role, file_gun, passphrase in planned:
        alg = algorithm_of(key.public_key()).name
        if keyid in present:
            action = "already present"
        else:
            stores.add_private(key, file_role, file_gun, store, passphrase)
            present.add(keyid)
            action = "imported"
        results.append(ImportResult(str(file), keyid, file_role, file_gun, alg, action, target.kind))
    return results
