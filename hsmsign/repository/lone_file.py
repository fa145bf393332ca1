"""Signing a lone metadata file, away from the repository (`hsmsign sign --file`).

A custodian receives a copy of a staged role on a USB stick (`stage export`), signs it with
the keys on this machine and carries it back (`stage merge`). The file is all there is: a root
names its own keys (and `--previous` the keys of the root before it); any other role's keys
are listed by its delegator, which is not in the file, so they are the keys given with `--key`,
else this home's keys recorded for that role.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from securesystemslib.signer import Key
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from hsmsign.fsutil import atomic_write
from hsmsign.keys import TOP_LEVEL_ROLES, tuf_key
from hsmsign.repository.layout import RepositoryError
from hsmsign.repository.staging import role_from_filename
from hsmsign.signing import SigningReport, SigningService

logger = logging.getLogger(__name__)


def read_metadata(path: Path) -> Metadata:
    try:
        return Metadata.from_bytes(Path(path).read_bytes())
    except FileNotFoundError:
        raise RepositoryError(f"{path} does not exist") from None
    except (OSError, DeserializationError) as e:
        raise RepositoryError(f"{path} is not TUF metadata ({e.__cause__ or e})") from None


def role_of_file(path: Path, md: Metadata, role: str | None) -> str:
    """`role`, else the file's name (`N.ROLE.json`, `ROLE.json`), else `_type` for a
    top-level role."""
    if role:
        return role
    named = role_from_filename(Path(path).name)
    if named and (named == md.signed.type
                  or (md.signed.type == "targets" and named not in TOP_LEVEL_ROLES)):
        return named
    if md.signed.type in TOP_LEVEL_ROLES:
        return md.signed.type
    raise RepositoryError(f"{path}: cannot tell which role it is; give --role ROLE")


def sign_file(path: Path, service: SigningService, *, role: str | None = None,
              previous: Path | None = None, keyids: list[str] | None = None) -> SigningReport:
    """Add this machine's signatures to the metadata file at `path`, in place."""
    md = read_metadata(path)
    role = role_of_file(path, md, role)
    if role in TOP_LEVEL_ROLES and md.signed.type != role:
        raise RepositoryError(f"{path} holds {md.signed.type} metadata, not {role}")
    if role not in TOP_LEVEL_ROLES and md.signed.type != "targets":
        raise RepositoryError(f"{path} holds {md.signed.type} metadata; a delegated role's is targets")
    if previous is not None and role != "root":
        raise RepositoryError(f"--previous ROOT_FILE is for signing a root; {path} is {role}; "
                              "nothing changed")
    if role == "root":
        keys, threshold = _root_keys(md.signed)
        counted = dict(keys)
        if previous is not None:
            old = read_metadata(previous)
            if not isinstance(old.signed, Root):
                raise RepositoryError(f"--previous {previous} is not root metadata")
            if old.signed.version != md.signed.version - 1:
                raise RepositoryError(f"--previous {previous} is root v{old.signed.version}; "
                                      f"{path} is v{md.signed.version}: give v{md.signed.version - 1}")
            keys = {**_root_keys(old.signed)[0], **keys}
        if keyids:
            keys = {k: v for k, v in keys.items() if k in keyids}
    else:
        wanted = keyids or sorted(r.keyid for r in service.stores.list_keys().keys if r.role == role)
        if not wanted:
            raise RepositoryError(f"this home has no key recorded for {role}; give --key KEYID")
        keys = {k: tuf_key(service.stores.public_key(k)) for k in wanted}
        counted, threshold = keys, 1  # the delegator, not the file, knows the threshold
    report = service.sign(md, role, keys, threshold, counted=counted)
    if report.signed_here:
        mode = os.stat(path).st_mode & 0o777
        atomic_write(Path(path), md.to_bytes(JSONSerializer()), mode=mode)
        logger.debug("signed %s with %s", path, report.signed_here)
    return report


def _root_keys(root: Root) -> tuple[dict[str, Key], int]:
    spec = root.roles["root"]
    return {k: root.get_key(k) for k in spec.keyids}, spec.threshold
