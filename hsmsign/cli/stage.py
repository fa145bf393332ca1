"""`hsmsign stage ...` and `hsmsign publish`: changes waiting in REPO/staged/ for signatures."""

from __future__ import annotations

from pathlib import Path

import click

from hsmsign.cli.context import REPO, common_options, pass_app


@click.group()
def stage():
    """Changes waiting for signatures: list, export, merge, discard."""


def _summary(t) -> str:
    return (f"{len(t.signed)}/{t.threshold}" + (f" ({t.label})" if t.label.startswith("root (") else ""))


@stage.command("list")
@REPO
@common_options
@pass_app
def list_(app, repo):
    """Each staged role: version, signatures present and needed, by key; stale ones marked."""
    from hsmsign.repository.publication import staged_roles

    repository = app.existing_repository(repo)
    roles = staged_roles(repository)
    if app.json:
        app.emit_json({"staged": [r.to_json() for r in roles]})
        return
    held = app.stores.all_keyids()
    rows = []
    for r in roles:
        keys = "; ".join(
            ", ".join(k[:7] + ("+" if k in t.signed else "") + ("*" if k in held else "")
                      for k in [*t.signed, *t.unsigned]) for t in r.thresholds)
        state = (f"STALE: {r.stale}" if r.stale else "complete: `hsmsign publish`" if r.complete
                 else "needs " + "; ".join(f"{t.missing} more ({t.label})"
                                           for t in r.thresholds if not t.met))
        rows.append([r.role, str(r.version), ", ".join(_summary(t) for t in r.thresholds),
                     keys, state])
    app.table(["ROLE", "VERSION", "SIGNED", "KEYS (+ = signed, * = here)", "STATUS"], rows,
              "nothing is staged")


@stage.command("export")
@REPO
@click.argument("role")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="File or directory to write the copy to (e.g. on a USB stick).")
@common_options
@pass_app
def export(app, repo, role, output):
    """Write a copy of staged ROLE for a custodian to sign with `sign --file`."""
    from hsmsign.errors import HsmsignError
    from hsmsign.fsutil import atomic_write

    repository = app.existing_repository(repo)
    staged = repository.staged_files().get(role)
    if staged is None:
        raise HsmsignError(f"nothing is staged for {role}; see `hsmsign stage list {repo}`")
    if output.is_dir():
        output = output / staged.path.name
    atomic_write(output, staged.path.read_bytes(), mode=0o644)
    if app.json:
        app.emit_json({"role": role, "version": staged.version, "output": str(output)})
        return
    app.note(f"wrote {output} ({role} v{staged.version}); the custodian runs "
             f"`hsmsign sign --file {output.name}` and returns it for `hsmsign stage merge`")


@stage.command("merge")
@REPO
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@common_options
@pass_app
def merge(app, repo, files):
    """Add the signatures in signed copies to the staged roles; publish when complete."""
    from hsmsign.repository.publication import merge as merge_files

    with app.locked(repo):
        repository = app.repository(repo)
        repository.require()
        added = merge_files(repository, list(files))
        written = repository.commit()
    if not app.json:
        for role, keyids in added.items():
            app.note(f"{role}: added signature(s) by {', '.join(k[:7] for k in keyids)}")
        if not added:
            app.note("the files carry no signature the staged roles lack; nothing changed")
    app.report_signing(repository, written, {"added": added})


@stage.command("discard")
@REPO
@click.argument("role", required=False)
@common_options
@pass_app
def discard(app, repo, role):
    """Remove staged ROLE, or everything staged."""
    from hsmsign.errors import HsmsignError

    with app.locked(repo):
        repository = app.repository(repo, signing=False)
        files = repository.staging.files()
        if role is not None and role not in files:
            raise HsmsignError(f"nothing is staged for {role}; see `hsmsign stage list {repo}`")
        removed = repository.staging.remove([role] if role else list(files))
    if app.json:
        app.emit_json({"removed": removed})
        return
    for name in removed:
        app.note(f"removed staged/{name}")
    if not removed:
        app.note("nothing is staged; nothing changed")


@click.command()
@REPO
@common_options
@pass_app
def publish(app, repo):
    """Publish the staged change when every threshold is met (snapshot and timestamp follow)."""
    from hsmsign.repository.publication import publish_staged

    with app.locked(repo):
        repository = app.repository(repo)
        repository.require()
        publish_staged(repository)
        written = repository.commit()
    app.report_signing(repository, written)
