"""The operations hsmsign's commands run on a repository: init, targets, delegations,
rotation and refresh, each through python-tuf's `edit_*()`, `do_snapshot()` and `do_timestamp()`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from securesystemslib.signer import Key
from tuf.api.metadata import DelegatedRole, Delegations, Root, TargetFile, Targets

from hsmsign.keys import ONLINE_ROLES, TOP_LEVEL_ROLES, normalize_role
from hsmsign.repository.layout import RepositoryError, check_init_arguments, now
from hsmsign.repository.storage import RepositoryStorage
from hsmsign.repository.targets import TargetChanges, TargetUpload, check_target_path


class HsmsignRepository(RepositoryStorage):
    """One repository directory; one instance per command."""

    def init(self, root_keys: list[Key], root_threshold: int, role_keys: dict[str, list[Key]],
             expires: dict[str, float]) -> None:
        if self.exists():
            raise RepositoryError(f"{self.path} already has metadata; nothing changed")
        check_init_arguments(len(root_keys), root_threshold, expires)
        for role, days in expires.items():
            self.set_expiry_days(role, days)
        self._config_changed = True
        with self.edit_root() as root:
            root.consistent_snapshot = True
            for key in root_keys:
                root.add_key(key, "root")
            root.roles["root"].threshold = root_threshold
            for role in ONLINE_ROLES:
                for key in role_keys[role]:
                    root.add_key(key, role)
        with self.edit_targets():
            pass
        self.do_snapshot(force=True)
        self.do_timestamp(force=True)

    def add_targets(self, role: str, targets: Iterable[TargetFile],
                    uploads: Iterable[TargetUpload] = ()) -> TargetChanges:
        """Add or replace `targets` in `role`. When every one is already there as given (and
        its file, if any), nothing is staged: no new versions for a change that changes nothing."""
        self.require()
        self.require_role(role)
        if role in ("root", "snapshot", "timestamp"):
            raise RepositoryError(f"{role} holds no targets; use targets or a delegated role")
        spec = None if role == "targets" else self.delegated_role(role)
        targets, uploads = list(targets), list(uploads)
        current = self.open(role).signed.targets
        changes = TargetChanges()
        for target in targets:
            check_target_path(target.path)
            if spec is not None and not spec.is_delegated_path(target.path):
                raise RepositoryError(
                    f"{target.path} is outside the paths delegated to {role} "
                    f"({', '.join(spec.paths or [])})"
                )
            known = current.get(target.path)
            if known is None:
                changes.added += 1
            elif known != target:
                changes.replaced += 1
            else:
                changes.unchanged += 1
        if not (changes.added or changes.replaced) and all(u.destination.exists() for u in uploads):
            return changes
        with self.edit_targets(role) as md:
            for target in targets:
                md.targets[target.path] = target
        self._uploads.extend(uploads)
        self.publish()
        return changes

    def remove_targets(self, role: str, paths: list[str]) -> None:
        self.require()
        self.require_role(role)
        with self.edit_targets(role) as md:
            for path in paths:
                if path not in md.targets:
                    raise RepositoryError(f"{role} has no target {path!r}; see `hsmsign target list`")
                del md.targets[path]
        self.publish()

    def all_targets(self) -> list[tuple[str, TargetFile]]:
        """(role, target) for every target of every role reachable from targets."""
        out = []
        for role in ["targets", *sorted(self.parents())]:
            for target in self.open(role).signed.targets.values():
                out.append((role, target))
        return out

    def add_delegation(self, role: str, keys: list[Key], *, paths: list[str] | None,
                       threshold: int | None, terminating: bool, parent: str) -> bool:
        """Delegate `role` from `parent`, or add keys and paths to an existing delegation.

        Returns True when the role is new.
        """
        self.require()
        role = normalize_role(role)
        if role in TOP_LEVEL_ROLES:
            raise RepositoryError(f"{role} is a top-level role and cannot be delegated")
        self.require_role(parent)
        if parent in ("root", "snapshot", "timestamp"):
            raise RepositoryError(f"only targets roles delegate; {parent} cannot")
        if role == parent:
            raise RepositoryError(f"delegation cycle: {role} cannot delegate to itself")
        parents = self.parents()
        if role in parents and parents[role] != parent:
            raise RepositoryError(
                f"{role} is already delegated by {parents[role]}; a role has one delegator "
                "(delegating it again from elsewhere would create a cycle or a second path)"
            )
        ancestor = parent
        while ancestor in parents:
            ancestor = parents[ancestor]
            if ancestor == role:
                raise RepositoryError(f"delegation cycle: {parent} is delegated by {role}")
        if parent != "targets" and paths:
            parent_spec = self.delegated_role(parent)
            for pattern in paths:
                if not any(_pattern_within(pattern, p) for p in parent_spec.paths or []):
                    raise RepositoryError(
                        f"path pattern {pattern!r} is outside what {parent} may sign "
                        f"({', '.join(parent_spec.paths or [])})"
                    )
        is_new = role not in parents
        with self.edit_targets(parent) as delegator:
            if delegator.delegations is None:
                delegator.delegations = Delegations(keys={}, roles={})
            if is_new:
                delegator.delegations.roles[role] = DelegatedRole(
                    role, [], threshold or 1, terminating, paths or ["*"])
            spec = delegator.delegations.roles[role]
            for key in keys:
                delegator.add_key(key, role)
            if paths and not is_new:
                spec.paths = sorted(set(spec.paths or []) | set(paths))
            if threshold is not None:
                spec.threshold = threshold
            if terminating:
                spec.terminating = True
            if not 1 <= spec.threshold <= len(spec.keyids):
                raise RepositoryError(
                    f"threshold {spec.threshold} for {role} is not between 1 and its "
                    f"{len(spec.keyids)} key(s)"
                )
        self._parents = None
        if is_new:
            with self.edit_targets(role):
                pass
        self.publish()
        return is_new

    def remove_delegation(self, role: str, keyid: str | None = None) -> list[str]:
        """Remove `role` (or only one of its keys). Returns warnings for the user."""
        self.require()
        self.require_role(role)
        if role in TOP_LEVEL_ROLES:
            raise RepositoryError(f"{role} is a top-level role; use `hsmsign rotate` to change its keys")
        parent = self.parents()[role]
        warnings = []
        with self.edit_targets(parent) as delegator:
            if keyid is None:
                spec = delegator.delegations.roles[role]
                for k in list(spec.keyids):
                    delegator.revoke_key(k, role)
                del delegator.delegations.roles[role]
            else:
                spec = delegator.delegations.roles[role]
                if keyid not in spec.keyids:
                    raise RepositoryError(f"key {keyid[:7]} is not a key of {role}")
                delegator.revoke_key(keyid, role)
                if len(spec.keyids) < spec.threshold:
                    warnings.append(
                        f"role {role} has fewer keys than its threshold of {spec.threshold}; "
                        "it will not be usable until keys are added to it"
                    )
        self._parents = None
        self.publish()
        return warnings

    def rotate(self, role: str, add: list[Key], remove: list[str],
               threshold: int | None = None) -> None:
        """Replace keys of `role`; the delegator is re-signed, then the role itself."""
        self.require()
        self.require_role(role)
        if role in TOP_LEVEL_ROLES:
            with self.edit_root() as root:
                _change_keys(root, role, add, remove, threshold)
        else:
            with self.edit_targets(self.parents()[role]) as parent:
                _change_keys(parent, role, add, remove, threshold)
        if role == "targets" or role not in TOP_LEVEL_ROLES:
            with self.edit(role):
                pass  # a new version, signed by the new keys
        self.do_snapshot(force=role == "snapshot")
        self.do_timestamp(force=role in ("snapshot", "timestamp"))

    def refresh(self, roles: list[str] | None, within_days: float | None) -> tuple[list[str], list[str]]:
        """Re-sign roles that expire within `within_days` (default: half their period).

        Without `roles`, roles whose keys are not here are left alone and reported (a cron job
        stages nothing); roles named in `roles` are refreshed all the same, and `commit()`
        stages what cannot be signed here. Returns (refreshed, skipped-with-reason).

        A cron job (no `roles`) while a change waits in staged/ judges and re-signs what clients
        see, metadata/, and publishes it: the staged change keeps waiting and goes stale if one
        of its roles is re-published meanwhile. Only a staged snapshot/timestamp (a change whose
        roles are out already) is taken along: cron publishes it when their keys are here.
        """
        self.require()
        if not roles and set(self.staged_files()) - {"snapshot", "timestamp"}:
            self._read_published_only()
        candidates = roles or ["root", "targets", *sorted(self.parents()), "snapshot", "timestamp"]
        for role in candidates:
            self.require_role(role)
        refreshed, skipped = [], []
        service = self._service()

        def due(role: str) -> bool:
            window = within_days if within_days is not None else self.expiry_days(role) / 2
            return self.open(role).signed.expires <= now() + timedelta(days=window)

        def signable(role: str) -> bool:
            keys, threshold = self.role_keys(role)
            if len(service.available(keys)) >= threshold or roles:
                return True  # a role asked for by name is staged when its keys are elsewhere
            problem = service.stores.configured_token_problem()
            skipped.append(f"{role}: expires {self.open(role).signed.expires:%Y-%m-%d %H:%M} UTC, "
                           f"but fewer than {threshold} of its keys are here"
                           f"{service.stores.elsewhere(keys)}"
                           f"{f' (the configured token is not present: {problem})' if problem else ''}")
            return False

        for role in candidates:
            if role in ("snapshot", "timestamp") or not due(role) or not signable(role):
                continue
            with self.edit(role):
                pass
            refreshed.append(role)
        snapshot_due = "snapshot" in candidates and due("snapshot")
        if (self._targets_infos or snapshot_due) and signable("snapshot"):
            if self.do_snapshot(force=snapshot_due)[0]:
                refreshed.append("snapshot")
        timestamp_due = "timestamp" in candidates and due("timestamp")
        if ("snapshot" in refreshed or timestamp_due) and signable("timestamp"):
            if self.do_timestamp(force=timestamp_due)[0]:
                refreshed.append("timestamp")
        return refreshed, skipped


def _change_keys(delegator: Root | Targets, role: str, add: list[Key], remove: list[str],
                 threshold: int | None = None) -> None:
    spec = delegator.get_delegated_role(role)
    if threshold is not None:
        spec.threshold = threshold
    for keyid in remove:
        if keyid not in spec.keyids:
            raise RepositoryError(f"key {keyid[:7]} is not a key of {role}; nothing changed")
    for key in add:
        if key.keyid in spec.keyids:
            raise RepositoryError(f"key {key.keyid[:7]} is already a key of {role}; nothing changed")
        delegator.add_key(key, role)
    for keyid in remove:
        delegator.revoke_key(keyid, role)
    if not 1 <= spec.threshold <= len(spec.keyids):
        raise RepositoryError(
            f"{role} would have {len(spec.keyids)} key(s) for a threshold of {spec.threshold}; "
            "add keys before removing others; nothing changed"
        )


def _pattern_within(child: str, parent: str) -> bool:
    """Whether every path `child` matches is also matched by `parent` (TUF fnmatch rules)."""
    from fnmatch import fnmatchcase

    child_parts, parent_parts = child.split("/"), parent.split("/")
    if len(child_parts) != len(parent_parts):
        return False
    return all(fnmatchcase(c, p) for c, p in zip(child_parts, parent_parts, strict=True))

