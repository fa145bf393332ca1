"""`hsmsign repo ...`: init, status, verify, refresh."""

from __future__ import annotations

from pathlib import Path

import click

from hsmsign.cli.context import REPO, common_options, pass_app
from hsmsign.keystore.base import StoreKind


def _parse_expires(values: tuple[str, ...]) -> dict[str, float]:
    from hsmsign.errors import HsmsignError

    out = {}
    for value in values:
        role, _, days = value.partition("=")
        try:
            out[role.strip()] = float(days)
        except ValueError:
            raise HsmsignError(f"--expires {value!r}: use ROLE=DAYS, e.g. timestamp=1") from None
    return out


@click.group()
def repo():
    """Create, inspect, verify and refresh a TUF repository."""


@repo.command()
@REPO
@click.option("--root-key", "root_keys", multiple=True, help="Key ID or public key PEM (repeat).")
@click.option("--root-threshold", type=int, default=1, show_default=True)
@click.option("--root-store", default="auto",
              type=click.Choice(["auto", *(k.value for k in StoreKind if k is not StoreKind.KMS)]),
              show_default=True,
              help="Where a generated root key goes (auto: a YubiKey, else a token, else a file).")
@click.option("--targets-key", help="Key ID or public key PEM; generated as a file if absent.")
@click.option("--snapshot-key", help="Key ID or public key PEM; generated as a file if absent.")
@click.option("--timestamp-key", help="Key ID or public key PEM; generated as a file if absent.")
@click.option("--expires", multiple=True, metavar="ROLE=DAYS",
              help="Expiry period (defaults: root=365 targets=90 snapshot=7 timestamp=1 delegation=90).")
@common_options
@pass_app
def init(app, repo, root_keys, root_threshold, root_store, targets_key, snapshot_key,
         timestamp_key, expires):
    """Create signed initial metadata for root, targets, snapshot and timestamp."""
    from hsmsign.repository.init import check_init_request, init_repository
    from hsmsign.service.client import remote_keys_from_environment
    from hsmsign.signing import SigningService

    expiry = _parse_expires(expires)
    check_init_request(repo, root_keys=root_keys, root_threshold=root_threshold,
                       root_store=root_store, expiry=expiry)  # before the stores are opened
    # HSMSIGN_SIGNER_URL: keys this machine does not hold sign through the service.
    service = SigningService(app.stores, remote=remote_keys_from_environment())
    result = init_repository(
        repo, app.stores, service, root_keys=root_keys, root_threshold=root_threshold,
        root_store=root_store, expiry=expiry, notify=app.note,
        online_keys={"targets": targets_key, "snapshot": snapshot_key,
                     "timestamp": timestamp_key})
    app.report_signing(result.repository, result.written)


@repo.command()
@REPO
@common_options
@pass_app
def status(app, repo):
    """Versions, expiry, thresholds, who signed and who must still sign."""
    from hsmsign.repository.publication import staged_roles
    from hsmsign.repository.verification import status as repo_status

    repository = app.repository(repo, signing=False, staged_view=False)
    problem = app.stores.configured_token_problem()
    if problem:
        app.note(f"warning: token keys not counted as here: {problem}")
    held = app.stores.all_keyids()
    roles = repo_status(repository, held)
    staged = staged_roles(app.repository(repo, signing=False))
    if app.json:
        app.emit_json({"roles": [r.to_json() for r in roles],
                       "staged": [r.to_json() for r in staged],
                       "targets": [{"role": role, "path": t.path, "length": t.length,
                                    "hashes": t.hashes} for role, t in repository.all_targets()]})
        return
    rows = []
    for r in roles:
        rows.append([r.role, str(r.version), f"{r.expires:%Y-%m-%d %H:%M}",
                     f"{r.signatures}/{r.threshold}", str(len(r.keys)),
                     ", ".join(k["keyid"][:7] + ("*" if k["here"] else "") for k in r.keys),
                     "; ".join(r.problems) or "ok"])
    app.table(["ROLE", "VERSION", "EXPIRES (UTC)", "SIGNED", "KEYS", "KEY IDS (* = here)", "STATUS"],
              rows, "no roles")
    if staged:
        click.echo("")
        app.table(["STAGED (not published)", "VERSION", "SIGNED", "STATUS"],
                  [[r.role, str(r.version),
                    ", ".join(f"{len(t.signed)}/{t.threshold}" for t in r.thresholds),
                    f"STALE: {r.stale}" if r.stale else "complete: `hsmsign publish`"
                    if r.complete else "needs " + "; ".join(
                        f"{t.missing} more ({t.label}) from: {', '.join(k[:7] for k in t.unsigned)}"
                        for t in r.thresholds if not t.met)] for r in staged], "")
    # Like `docker trust inspect --pretty`: signed targets and who signed them.
    signers = {r.role: ", ".join(k["keyid"][:7] for k in r.keys if k["signed"]) or "nobody"
               for r in roles}
    targets = repository.all_targets()
    click.echo("")
    app.table(["SIGNED TARGET", "DIGEST (SHA-256)", "ROLE", "SIGNED BY"],
              [[t.path, t.hashes.get("sha256", ""), role, signers[role]]
               for role, t in targets[:50]], "No targets.")
    if len(targets) > 50:
        app.note(f"... and {len(targets) - 50} more; `hsmsign target list {repo}` lists them all.")
    by_role = {r.role: r for r in roles}
    click.echo("")
    app.table(["ADMINISTRATIVE KEYS", "KEY IDS"],
              [[f"{role} (threshold {by_role[role].threshold})",
                ", ".join(k["keyid"] for k in by_role[role].keys)] for role in ("root", "targets")],
              "")


@repo.command()
@REPO
@click.option("--root", "trusted_root", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Start from this trusted root instead of metadata/1.root.json.")
@common_options
@pass_app
def verify(app, repo, trusted_root):
    """Verify every role as a TUF client would; exit 0 only if all verify."""
    from hsmsign.repository.verification import verify as repo_verify

    result = repo_verify(app.repository(repo, signing=False),
                         trusted_root.read_bytes() if trusted_root else None)
    if app.json:
        app.emit_json(result.to_json())
        return
    for role, version in result.roles.items():
        app.note(f"{role} v{version}: ok")
    click.echo(f"{repo}: verified (root v{result.root_version}, {len(result.roles)} roles)")


@repo.command()
@REPO
@click.option("--role", "roles", multiple=True, help="Only these roles (repeat).")
@click.option("--within", type=float, help="Re-sign roles expiring within DAYS (default: half their period).")
@common_options
@pass_app
def refresh(app, repo, roles, within):
    """Bump version and expiry of roles that expire soon, and re-sign them (for cron).

    A role named with --role whose keys are not here is staged for its custodians to sign;
    without --role such roles are skipped with a warning."""
    with app.locked(repo):
        repository = app.repository(repo)
        refreshed, skipped = repository.refresh(list(roles) or None, within)
        written = repository.commit()
    for line in skipped:
        app.note(f"skipped {line}")
    if not app.json:
        app.note(f"refreshed: {', '.join(refreshed) or 'nothing was due'}")
    app.report_signing(repository, written, {"refreshed": refreshed, "skipped": skipped})
