"""The repository's layout on disk, its defaults, and the names of its metadata files."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from tuf.api.metadata import Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from hsmsign.errors import HsmsignError
from hsmsign.keys import TOP_LEVEL_ROLES


METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CONFIG_FILE = "hsmsign.json"
LOCK_FILE = ".hsmsign.lock"
PUBLIC_FILE_MODE = 0o644
# Compact: json's C encoder (the indented form runs its pure-Python one, ~2x the time for a
# 100,000-target role) and ~20% fewer bytes for clients; TUF and python-tuf read both.
METADATA_SERIALIZER = JSONSerializer(compact=True)

# Root changes rarely and its keys are offline: a year. Targets are signed by a person when
# releasing: a quarter. Snapshot and timestamp are signed by online keys, by a cron job:
# short periods bound how long a mirror can replay stale metadata (freeze attacks).
DEFAULT_EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
DELEGATION_EXPIRY_DAYS = 90
LOCK_TIMEOUT_SECONDS = float(os.environ.get("HSMSIGN_LOCK_TIMEOUT", "30"))

_SIGNED_TYPES = {"root": Root, "timestamp": Timestamp, "snapshot": Snapshot}


class RepositoryError(HsmsignError):
    """The repository is missing, damaged, or the change asked for is not allowed."""


class NotAKeyOfRole(RepositoryError):
    """A key chosen to sign a role (`sign --key`) is not one of that role's keys."""


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def signed_type(role: str):
    return _SIGNED_TYPES.get(role, Targets)


def metadata_filename(role: str, version: int) -> str:
    if role == "timestamp":
        return "timestamp.json"
    return f"{version}.{role}.json"


def check_init_arguments(root_keys: int, root_threshold: int, expires: dict[str, float]) -> None:
    """What `init` refuses, checked before any key is generated for it."""
    if not 1 <= root_threshold <= root_keys:
        raise RepositoryError(
            f"root threshold {root_threshold} is not between 1 and the {root_keys} root key(s) given"
        )
    for role, days in expires.items():
        if role not in TOP_LEVEL_ROLES and role != "delegation":
            raise RepositoryError(f"--expires: unknown role {role!r}; give one of root, targets, "
                                  "snapshot, timestamp or delegation (every delegated role)")
        if days <= 0:
            raise RepositoryError(f"--expires {role}: give a positive number of days")
