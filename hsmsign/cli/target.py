"""`hsmsign target ...`: add (by file, by hash, from a manifest), remove, list."""

from __future__ import annotations

from pathlib import Path

import click

from hsmsign.cli.context import REPO, collector_paused, common_options, pass_app


@click.group()
def target():
    """Add, remove and list targets (`notary addhash` and friends)."""


@target.command()
@REPO
@click.argument("path", required=False)
@click.option("--file", "file_", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Hash this file and publish it under targets/.")
@click.option("--length", type=int, help="Length in bytes (with --sha256, for a file kept elsewhere).")
@click.option("--sha256", help="SHA-256 in hex (with --length).")
@click.option("--from-manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Many targets: JSON shaped like TUF's targets map, or CSV path,length,sha256.")
@click.option("--role", default="targets", show_default=True)
@common_options
@pass_app
def add(app, repo, path, file_, length, sha256, from_manifest, role):
    """Add a target PATH to ROLE (by --file, or --length and --sha256), or many --from-manifest."""
    from hsmsign.errors import HsmsignError
    from hsmsign.repository.targets import (target_from_file, target_from_hash,
                                            targets_from_manifest)

    uploads = []
    if from_manifest:
        if path or file_ or length is not None or sha256:
            raise HsmsignError("--from-manifest takes no PATH, --file, --length or --sha256")
        with collector_paused():  # 100,000 targets: see collector_paused
            targets = targets_from_manifest(from_manifest)
    elif not path:
        raise HsmsignError("give a target PATH (or --from-manifest FILE)")
    elif file_:
        if length is not None or sha256:
            raise HsmsignError("give either --file or --length and --sha256, not both")
        tf, upload = target_from_file(path, file_, repo)
        targets, uploads = [tf], [upload]
    elif length is not None and sha256:
        targets = [target_from_hash(path, length, sha256)]
    else:
        raise HsmsignError("give --file FILE, or both --length N and --sha256 HEX")
    with app.locked(repo), collector_paused():
        repository = app.repository(repo)
        changes = repository.add_targets(role, targets, uploads)
        written = repository.commit()
    if not app.json:
        if written:
            parts = [f"added {changes.added} target(s) to {role}"]
            if changes.replaced:
                parts.append(f"replaced {changes.replaced} (new length or hashes)")
            if changes.unchanged:
                parts.append(f"{changes.unchanged} already there as given")
            app.note("; ".join(parts))
        else:
            app.note(f"{role} already has these {changes.unchanged} target(s) as given; "
                     "nothing changed")
    app.report_signing(repository, written)


@target.command()
@REPO
@click.argument("paths", nargs=-1, required=True)
@click.option("--role", default="targets", show_default=True)
@common_options
@pass_app
def remove(app, repo, paths, role):
    """Remove targets from ROLE."""
    with app.locked(repo):
        repository = app.repository(repo)
        repository.remove_targets(role, list(paths))
        written = repository.commit()
    if not app.json:
        app.note(f"removed {len(paths)} target(s) from {role}")
    app.report_signing(repository, written)


@target.command("list")
@REPO
@click.option("--role", help="Only this role's targets.")
@common_options
@pass_app
def list_(app, repo, role):
    """Every target of every role, with length and SHA-256."""
    repository = app.existing_repository(repo)
    if role is not None:
        repository.require_role(role)
    rows = [(r, t) for r, t in repository.all_targets() if role is None or r == role]
    if app.json:
        app.emit_json([{"role": r, "path": t.path, "length": t.length, "hashes": t.hashes,
                        **({"custom": t.custom} if t.custom else {})} for r, t in rows])
        return
    app.table(["PATH", "LENGTH", "SHA256", "ROLE"],
              [[t.path, str(t.length), t.hashes.get("sha256", ""), r] for r, t in rows],
              "No targets.")
