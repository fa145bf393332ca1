"""A TUF repository on disk, edited through python-tuf's `tuf.repository.Repository`.

Layout (what a TUF client downloads; serve `metadata/` and `targets/` with any web server):

    REPO/metadata/1.root.json, 2.root.json, ...   every root version
    REPO/metadata/timestamp.json
    REPO/metadata/N.snapshot.json, N.targets.json, N.<delegated role>.json
    REPO/targets/<dir>/<sha256>.<name>            target files added by file (consistent snapshots)
    REPO/hsmsign.json                             expiry periods (not served)

hsmsign supplies storage (`open`/`close`), keys and signing; python-tuf's base class supplies
`edit_*()`, `do_snapshot()` and `do_timestamp()`. A command's changes are staged in memory
and written by `commit()` only when everything succeeded: each file atomically, versioned files
first and `timestamp.json` last, so a client never sees a half-written set. The whole command
holds a lock on the repository.
"""

from hsmsign.repository.layout import (
    CONFIG_FILE,
    DEFAULT_EXPIRY_DAYS,
    DELEGATION_EXPIRY_DAYS,
    LOCK_FILE,
    LOCK_TIMEOUT_SECONDS,
    METADATA_DIR,
    PUBLIC_FILE_MODE,
    TARGETS_DIR,
    NotAKeyOfRole,
    RepositoryError,
    check_init_arguments,
    metadata_filename,
    now,
    signed_type,
)
from hsmsign.repository.lock import RepositoryLock
from hsmsign.repository.repo import HsmsignRepository
from hsmsign.repository.storage import RepositoryStorage
from hsmsign.repository.targets import TargetChanges, TargetUpload, check_target_path

__all__ = [
    "CONFIG_FILE", "DEFAULT_EXPIRY_DAYS", "DELEGATION_EXPIRY_DAYS", "LOCK_FILE",
    "LOCK_TIMEOUT_SECONDS", "METADATA_DIR", "PUBLIC_FILE_MODE", "TARGETS_DIR",
    "HsmsignRepository", "NotAKeyOfRole", "RepositoryError", "RepositoryLock", "RepositoryStorage",
    "TargetChanges", "TargetUpload", "check_init_arguments", "check_target_path",
    "metadata_filename", "now", "signed_type",
]
