"""`repo init` as one transaction: check the arguments, make the keys that were not given,
write signed initial metadata for the four top-level roles, and undo everything when any step
fails (the directory if this made it, the keys it made, wherever they went).

Callable from Python with the same result as the command:

    init_repository(Path("repo"), stores, service, root_keys=["3491e6a"])
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign.errors import HsmsignError
from hsmsign.fsutil import ensure_public_dir
from hsmsign.keys import DEFAULT_ALGORITHM, ONLINE_ROLES, KeyRecord, algorithm
from hsmsign.keystore.base import StoreKind
from hsmsign.repository.layout import check_init_arguments
from hsmsign.repository.lock import RepositoryLock
from hsmsign.repository.repo import HsmsignRepository

if TYPE_CHECKING:
    from securesystemslib.signer import Key

    from hsmsign.keystore.stores import KeyStores
    from hsmsign.signing import SigningService

logger = logging.getLogger(__name__)


@dataclass
class InitResult:
    """What `init_repository` did: the repository (with its signing reports), the metadata
    files written, the keys it made and why each went where it did."""

    repository: HsmsignRepository
    written: list[str]
    generated: list[tuple[KeyRecord, str]] = field(default_factory=list)


def check_init_request(path: Path, *, root_keys: Sequence[str] = (), root_threshold: int = 1,
                       root_store: str = "auto", expiry: Mapping[str, float] | None = None) -> None:
    """Nothing, or the error for an init that cannot be done (checked before any key or
    device is touched)."""
    if root_keys and root_store != "auto":
        raise HsmsignError("--root-store places a generated root key; with --root-key, drop it")
    check_init_arguments(max(1, len(root_keys)), root_threshold, dict(expiry or {}))
    if path.exists() and not path.is_dir():
        raise HsmsignError(f"{path} is a file; give a directory for the repository")
    if (path / "metadata").exists() and any((path / "metadata").iterdir()):
        raise HsmsignError(f"{path}/metadata is not empty; nothing changed (to change this "
                           "repository, see `hsmsign repo status`; to start anew, choose an empty "
                           "directory)")


def init_repository(path: Path, stores: KeyStores, service: SigningService, *,
                    root_keys: Sequence[str] = (), root_threshold: int = 1,
                    root_store: str = "auto", online_keys: Mapping[str, str | None] | None = None,
                    expiry: Mapping[str, float] | None = None,
                    notify: Callable[[str], None] = lambda message: None) -> InitResult:
    """Create `path` (or use an empty one) with signed initial metadata.

    `root_keys` and `online_keys` (role -> key) are key IDs or public key PEM files; a role
    without one gets a new key (root in `root_store`, the others as `--store auto` puts them).
    Every secret is asked before the first key is made. On failure nothing is left: the
    directory if it was made here, and every key made here (a key that cannot be removed is
    named through `notify`, with the command that removes it).
    """
    expiry = dict(expiry or {})
    online = {role: (online_keys or {}).get(role) for role in ONLINE_ROLES}
    check_init_request(path, root_keys=root_keys, root_threshold=root_threshold,
                       root_store=root_store, expiry=expiry)
    created = not path.exists()
    generated: list[tuple[KeyRecord, str]] = []  # removed again if anything fails
    ensure_public_dir(path)
    try:
        with RepositoryLock(path):
            repository = HsmsignRepository(path, service)
            if repository.exists():
                raise HsmsignError(f"{path} already has metadata; nothing changed")
            given = {k: stores.tuf_key_of(k) for k in (*root_keys, *filter(None, online.values()))}
            # Every secret before the first key is made: a missing one must not leave a
            # root key behind on a token.
            for role, keyid in online.items():
                if not keyid:
                    stores.secrets.new_passphrase(role)

            def generate(role: str) -> Key:
                store = root_store if role == "root" else "auto"
                record, why = stores.generate(role, None, algorithm(DEFAULT_ALGORITHM), store,
                                              file_option="--root-store file")
                generated.append((record, why))
                logger.info("generated %s key %s in the %s store", role, record.keyid[:7],
                            record.store)
                notify(f"generated {role} key {record.keyid} in {record.store} ({why})")
                return stores.tuf_key_of(record.keyid)

            roots = [given[k] for k in root_keys] or [generate("root")]
            role_keys = {role: [given[keyid] if keyid else generate(role)]
                         for role, keyid in online.items()}
            repository.init(roots, root_threshold, role_keys, expiry)
            written = repository.commit()
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        _remove_generated(stores, [record for record, _ in generated], notify)
        raise
    return InitResult(repository, written, generated)


def _remove_generated(stores: KeyStores, records: list[KeyRecord],
                      notify: Callable[[str], None]) -> None:
    """Undo the keys a failed init made; say which could not be removed."""
    for record in records:
        try:
            stores.store_of(record).remove(record.keyid)
        except Exception as e:  # noqa: BLE001 - the original error is the one to report
            notify(f"warning: the {record.role} key {record.keyid} made by this command is "
                   f"still in {StoreKind(record.store)} ({e}); remove it with "
                   "`hsmsign key remove`")
