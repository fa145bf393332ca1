"""Where a command's changes go: into `metadata/` when they verify there as a client would,
into `staged/` while they need signatures held elsewhere.

The rule (issue 15): `metadata/` only ever holds metadata that verifies as a client would.
Each file is judged by python-tuf's verification (`verification.thresholds`) against its
delegator as `metadata/` will hold it, on the bytes just signed; when root changes, or only
part of a change goes out, the client's own validator checks the whole chain with the files
(`verification.verify` with an overlay) before anything is written. A change that touches a staged role joins
the staged change, which is published as one: its roles, then snapshot and timestamp when
their keys are here (else they are staged in turn, and published by whoever holds them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization import DeserializationError

from hsmsign.repository.layout import METADATA_SERIALIZER, RepositoryError, metadata_filename, now
from hsmsign.repository.staging import role_from_filename
from hsmsign.repository.verification import Threshold, thresholds, verify
from hsmsign.signing import valid_signers

logger = logging.getLogger(__name__)

FOLLOWERS = ("snapshot", "timestamp")  # made again for every publication


def role_thresholds(repo, role: str, md: Metadata) -> list[Threshold]:
    """`role`'s thresholds for `md` as the repository reads now (a new root: its own keys and
    the published root before it)."""
    previous = None
    if role == "root" and md.signed.version > 1:
        previous = repo.read_file(metadata_filename("root", md.signed.version - 1), "root").signed
    return thresholds(repo, role, md, previous)


def complete(checks: list[Threshold]) -> bool:
    return all(t.met for t in checks)


def settle(repo) -> None:
    """Write `repo`'s pending changes where they belong (see the module's docstring)."""
    if repo.staged_view and repo._from_staged & repo._pending.keys():
        adopt_staged(repo)
    pending = {role: md for role, md in repo._pending.items() if repo.role_exists(role)}
    repo._dropped.update(set(repo._pending) - set(pending))
    repo.staging.remove(repo._dropped)
    after = _thresholds_after_writing(repo, pending)
    incomplete = {role for role, c in after.items() if not complete(c)}
    if not incomplete:
        # A new root changes whose keys count for every role: the client's own check of the
        # whole chain then (root files are small). Otherwise each file was checked above
        # against its delegator as it will be, on the bytes just signed.
        _publish(repo, pending, strict=True, client_check="root" in pending)
        return
    # Who must sign, as the staged change will be judged (its own delegators included).
    checks = {role: role_thresholds(repo, role, md) for role, md in pending.items()}
    if not _verifies(repo):
        # metadata/ did not verify before this command (a repository being made, or one an
        # older hsmsign left half-signed): written there as before staging existed.
        repo.outcome.written += repo.write_published(pending)
        return
    core = {r: md for r, md in pending.items() if r not in FOLLOWERS}
    if incomplete & core.keys():
        # Snapshot and timestamp are made again when the change is published; the ones
        # signed now go nowhere, so they are not reported as signed.
        for role in FOLLOWERS:
            repo.reports.pop(role, None)
        _stage(repo, core, checks)
        return
    ready = dict(core)  # the roles, then snapshot, then timestamp, as far as they are signed
    for role in FOLLOWERS:
        if role in incomplete:
            break
        if role in pending:
            ready[role] = pending[role]
    rest = {r: md for r, md in pending.items() if r not in ready}
    if ready and _publish(repo, ready, strict=False, client_check=True):
        _stage(repo, rest, checks)
    else:
        _stage(repo, pending, checks)


def adopt_staged(repo) -> None:
    """Make the whole staged change part of this command's, followed by snapshot and timestamp
    once its roles meet their thresholds."""
    for role in repo.staged_files():
        if not repo.role_exists(role):  # its delegation was removed by this command
            repo._pending.pop(role, None)
            repo._dropped.add(role)
        elif role not in repo._pending:
            repo._pend(role, repo.open(role))
    for role, md in repo._pending.items():
        if role not in ("root", *FOLLOWERS):
            repo._targets_infos[f"{role}.json"] = MetaFile(md.signed.version)
    if all(complete(role_thresholds(repo, r, md))
           for r, md in list(repo._pending.items()) if r not in FOLLOWERS):
        repo.do_snapshot()
        repo.do_timestamp()


def missing(repo) -> list[tuple[str, str]]:
    """What the staged change still needs: (role, phrase) (empty: publishable)."""
    out = []
    for role in repo.staged_files():
        md = repo.open(role)
        for t in role_thresholds(repo, role, md):
            if not t.met:
                out.append((role, f"{role} v{md.signed.version} needs {t.missing} more "
                                  f"signature(s) ({t.label}) from: "
                                  f"{', '.join(k[:7] for k in t.unsigned) or 'no key'}"))
    return out


def publish_staged(repo) -> None:
    """`hsmsign publish`: the staged change, if complete and not stale; else an error."""
    if not repo.staged_files():
        raise RepositoryError(f"nothing is staged in {repo.staging.path}; nothing changed")
    for role in repo.staged_files():
        reason = stale(repo, role, repo.open(role))
        if reason:
            raise RepositoryError(f"staged {role} is stale ({reason}); discard it with "
                                  f"`hsmsign stage discard REPO {role}`; nothing changed")
    gaps = missing(repo)
    core_missing = [phrase for role, phrase in gaps if role not in FOLLOWERS]
    if core_missing:
        raise RepositoryError("not published: " + "; ".join(core_missing) + "; nothing changed")
    if all(role in FOLLOWERS for role in repo.staged_files()):
        for role, phrase in gaps:  # only snapshot/timestamp wait: their keys must be here
            keys, threshold = repo.role_keys(role)
            if len(repo._service().available(keys)) < threshold:
                raise RepositoryError(f"not published: {phrase}, and fewer than {threshold} of "
                                      "them are here; run `hsmsign publish` where they are; "
                                      "nothing changed")
    adopt_staged(repo)


def stale(repo, role: str, md: Metadata) -> str | None:
    """Why a staged `md` can no longer be published, or None."""
    if md.signed.expires <= now():
        return f"it expired on {md.signed.expires:%Y-%m-%d %H:%M} UTC"
    published = _published_view(repo)
    try:
        base = published.open(role).signed.version
    except RepositoryError:
        return None  # metadata/ itself is damaged: `repo verify` says how
    if md.signed.version != base + 1:
        return (f"it was staged on v{md.signed.version - 1}, but v{base} is published now: "
                "the base moved on")
    return None


def merge(repo, paths: list[Path]) -> dict[str, list[str]]:
    """Add the signatures in returned copies of staged files. Every file is checked before
    any signature is taken: a changed signed part, a signature by a key that is not the role's,
    or one that does not verify refuses the whole merge. Returns role -> key IDs added."""
    added: dict[str, list[str]] = {}
    for path in paths:
        try:
            md = Metadata.from_bytes(Path(path).read_bytes())
        except (OSError, DeserializationError) as e:
            raise RepositoryError(f"{path} is not TUF metadata ({e}); nothing changed") from None
        role = _role_of(Path(path), md, repo.staged_files())
        staged = repo.open(role)
        data = staged.signed_bytes
        if md.signed_bytes != data:
            raise RepositoryError(
                f"{path}: its signed part differs from staged {role} v{staged.signed.version} "
                "(changed after it was exported, or another version); nothing changed")
        keys, _ = repo.role_keys(role, staged if role == "root" else None)
        if role == "root" and staged.signed.version > 1:
            previous = repo.read_file(metadata_filename("root", staged.signed.version - 1), "root")
            keys = {**repo.role_keys("root", previous)[0], **keys}
        for keyid, signature in md.signatures.items():
            if staged.signatures.get(keyid) == signature:
                continue
            if keyid not in keys:
                raise RepositoryError(f"{path}: it carries a signature by {keyid[:7]}, which is not "
                                      f"a key of {role}; nothing changed")
            if not valid_signers(md, {keyid: keys[keyid]}, data):
                raise RepositoryError(f"{path}: the signature by {keyid[:7]} does not verify; "
                                      "nothing changed")
            staged.signatures[keyid] = signature
            added.setdefault(role, []).append(keyid)
    for role in added:
        repo._pend(role, repo.open(role))
    return added


@dataclass
class StagedRole:
    role: str
    version: int
    file: str
    expires: object
    thresholds: list[Threshold]
    stale: str | None

    @property
    def complete(self) -> bool:
        return complete(self.thresholds)

    def to_json(self) -> dict:
        return {"role": self.role, "version": self.version, "file": self.file,
                "expires": self.expires.isoformat().replace("+00:00", "Z"),
                "complete": self.complete, "stale": self.stale,
                "thresholds": [t.to_json() for t in self.thresholds]}


def staged_roles(repo) -> list[StagedRole]:
    """Every staged role: version, signatures present and needed by key, and staleness."""
    out = []
    for role, staged in repo.staged_files().items():
        md = repo.open(role)
        out.append(StagedRole(role, md.signed.version, staged.path.name, md.signed.expires,
                              role_thresholds(repo, role, md), stale(repo, role, md)))
    return out


# -- internals ------------------------------------------------------------------------


def _role_of(path: Path, md: Metadata, staged: dict) -> str:
    named = role_from_filename(path.name)
    for role in (named, md.signed.type):
        if role in staged:
            return role
    raise RepositoryError(f"{path}: nothing is staged for {named or md.signed.type} "
                          "(see `hsmsign stage list`); nothing changed")


def _published_view(repo):
    if getattr(repo, "_published", None) is None:
        repo._published = type(repo)(repo.path, staged_view=False)
    return repo._published


def _verifies(repo) -> bool:
    try:
        verify(repo)
    except RepositoryError:
        return False
    return True


def _thresholds_after_writing(repo, files: dict[str, Metadata]) -> dict[str, list[Threshold]]:
    """Each file's thresholds (python-tuf's verification) against its delegator as metadata/
    will hold it once `files` are written: one of `files`, else the published one."""
    published = _published_view(repo)
    parents = repo.parents()
    out = {}
    for role, md in files.items():
        payload = repo.payloads.get(role) if role in repo.reports else None
        if role == "root":
            out[role] = role_thresholds(repo, role, md)
            continue
        parent = "root" if role in ("targets", "snapshot", "timestamp") else parents.get(role)
        if parent is None:
            out[role] = [Threshold(role, 1, [], [])]
            continue
        if parent in files:
            delegator = files[parent]
        elif parent not in repo._from_staged:
            delegator = repo.open(parent)  # read from metadata/ already, as published
        else:
            delegator = published.open(parent)
        out[role] = thresholds(repo, role, md, delegator=delegator.signed, payload=payload)
    return out


def _publish(repo, files: dict[str, Metadata], *, strict: bool, client_check: bool) -> bool:
    """Write `files` into metadata/; with `client_check`, only if metadata/ then verifies as
    a client would. Not strict: False when it would not. Strict: an error, unless metadata/
    did not verify before."""
    for role in files:
        if role in repo._from_staged:
            reason = stale(repo, role, files[role])
            if reason:
                raise RepositoryError(f"staged {role} is stale ({reason}); discard it with "
                                      f"`hsmsign stage discard REPO {role}`; nothing changed")
    data = {role: md.to_bytes(METADATA_SERIALIZER) for role, md in files.items()}
    overlay = {metadata_filename(role, files[role].signed.version): data[role] for role in files}
    parents = repo.parents()
    needed = set(files) | {child for child, parent in parents.items() if parent in files}
    for role in list(needed):
        while role in parents:
            role = parents[role]
            needed.add(role)
    try:
        if client_check:
            verify(repo, overlay=overlay, only=needed.__contains__)
    except RepositoryError as e:
        if not strict:
            return False
        if _verifies(repo):
            raise RepositoryError(f"not written: metadata/ would not verify after this change "
                                  f"({e}); nothing changed") from None
    repo.outcome.written += repo.write_published(files, data)
    return True


def _stage(repo, files: dict[str, Metadata], checks: dict[str, list[Threshold]]) -> None:
    for role, md in files.items():
        repo.outcome.staged.append(repo.staging.write(role, md))
        repo.outcome.waiting[role] = checks.get(role) or role_thresholds(repo, role, md)
