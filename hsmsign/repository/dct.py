"""Docker Content Trust's signer convention on a TUF repository: a signer's keys join the
`releases` delegation and a delegation named after the signer (what `docker trust signer add`
does), and leave both again.

The functions change the repository in memory; the caller holds its lock and commits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from securesystemslib.signer import Key

    from hsmsign.repository.repo import HsmsignRepository

logger = logging.getLogger(__name__)

RELEASES = "releases"


def add_signer(repository: HsmsignRepository, name: str, keys: Sequence[Key],
               paths: Sequence[str] = ()) -> None:
    """Delegate from targets to `releases` and to `name` with `keys` (and `paths`, default
    DCT's '*'); a role that already has every key and pattern is left as it is."""
    for role in (RELEASES, name):
        present, patterns = set(), set()
        if repository.role_exists(role):
            present = set(repository.role_keys(role)[0])
            patterns = set(repository.delegated_role(role).paths or [])
        new_keys = [k for k in keys if k.keyid not in present]
        if new_keys or not set(paths) <= patterns or not repository.role_exists(role):
            logger.info("signer %s: %d new key(s) for %s", name, len(new_keys), role)
            repository.add_delegation(role, new_keys, paths=list(paths) or None, threshold=None,
                                      terminating=False, parent="targets")


def remove_signer(repository: HsmsignRepository, name: str) -> list[str]:
    """Remove the delegation `name` and its keys from `releases`; warnings for the user."""
    repository.require_role(name)
    keyids = list(repository.role_keys(name)[0])
    warnings = repository.remove_delegation(name)
    if repository.role_exists(RELEASES):
        releases = set(repository.role_keys(RELEASES)[0])
        for keyid in keyids:
            if keyid in releases:
                warnings += repository.remove_delegation(RELEASES, keyid)
    return warnings
