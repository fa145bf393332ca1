"""The staging area: `REPO/staged/`, beside `metadata/` and never served.

A change that cannot meet every threshold it needs with the keys at hand waits here, one file
per role (`N.ROLE.json`, the version it will have when published), with the signatures it has
so far. Custodians add theirs (`hsmsign sign REPO ROLE`, or `stage export` + `sign --file` +
`stage merge`); when every threshold is met the change moves into `metadata/`. This module
only keeps the files; what goes where is decided in `storage.py`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from hsmsign.fsutil import atomic_write, ensure_public_dir, fsync_dir
from hsmsign.repository.layout import PUBLIC_FILE_MODE, RepositoryError, signed_type

logger = logging.getLogger(__name__)

STAGED_DIR = "staged"
_NAME = re.compile(r"^(\d+)\.(.+)\.json$")


def staged_filename(role: str, version: int) -> str:
    """Every staged role, timestamp too, carries its version in its name (as `stage export`
    suggests to custodians)."""
    return f"{version}.{role}.json"


def role_from_filename(name: str) -> str | None:
    """The role a file's name says: `N.ROLE.json` or `ROLE.json`."""
    m = _NAME.match(name)
    if m:
        return m.group(2)
    if name.endswith(".json") and len(name) > 5:
        return name[:-5]
    return None


@dataclass(frozen=True)
class StagedFile:
    role: str
    version: int
    path: Path


class StagingArea:
    """The files in `REPO/staged/`: at most one staged version per role."""

    def __init__(self, repo_path: Path):
        self.path = Path(repo_path) / STAGED_DIR

    def files(self) -> dict[str, StagedFile]:
        out: dict[str, StagedFile] = {}
        if not self.path.is_dir():
            return out
        for name in sorted(os.listdir(self.path)):
            m = _NAME.match(name)
            if not m:
                continue
            role, version = m.group(2), int(m.group(1))
            if role in out:
                raise RepositoryError(
                    f"{self.path} holds two versions of {role} ({out[role].path.name}, {name}); "
                    f"discard one with `hsmsign stage discard` or remove the older file")
            out[role] = StagedFile(role, version, self.path / name)
        return out

    def roles(self) -> list[str]:
        return list(self.files())

    def read(self, role: str) -> Metadata:
        staged = self.files()[role]
        try:
            md = Metadata.from_bytes(staged.path.read_bytes())
        except DeserializationError as e:
            raise RepositoryError(f"{staged.path} is not valid TUF metadata ({e.__cause__ or e}); "
                                  f"discard it with `hsmsign stage discard REPO {role}`") from None
        expected = signed_type(role)
        if not isinstance(md.signed, expected) or md.signed.version != staged.version:
            raise RepositoryError(f"{staged.path} is not {role} v{staged.version} metadata; discard "
                                  f"it with `hsmsign stage discard REPO {role}`")
        return md

    def write(self, role: str, md: Metadata) -> str:
        """Stage `md` as the only staged version of `role`; returns the file name."""
        ensure_public_dir(self.path)
        name = staged_filename(role, md.signed.version)
        old = self.files().get(role)
        atomic_write(self.path / name, md.to_bytes(JSONSerializer()), mode=PUBLIC_FILE_MODE)
        if old is not None and old.path.name != name:
            old.path.unlink()
        fsync_dir(self.path)
        logger.debug("staged %s", name)
        return name

    def remove(self, roles) -> list[str]:
        files = self.files()
        removed = []
        for role in roles:
            if role in files:
                files[role].path.unlink()
                removed.append(files[role].path.name)
        if removed:
            fsync_dir(self.path)
        return removed
