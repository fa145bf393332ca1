"""`hsmsign backup ...`: create, verify and restore encrypted backups of the file keys."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from hsmsign.cli.context import collector_paused, common_options, pass_app

# A progress bar is drawn (on a terminal) when there are at least this many keys.
PROGRESS_MIN_KEYS = 50

KEY_COLUMNS = ["ROLE", "GUN", "KEY ID", "ALGORITHM", "STORE", "IN BACKUP"]
RESTORE_COLUMNS = ["ROLE", "GUN", "KEY ID", "ALGORITHM", "ACTION"]


@click.group()
def backup():
    """Encrypted backups of the file keys (age-encrypted tar), verified; safe restore."""


@contextmanager
def _progress(app):
    """A callback drawing a rich progress bar on stderr, when it is a terminal and a task has
    at least PROGRESS_MIN_KEYS steps. A bar runs only while its task does, so that nothing
    redraws the terminal while a passphrase is asked for."""
    if app.json or not sys.stderr.isatty():
        yield lambda task, done, total: None
        return
    live: dict = {}

    def stop() -> None:
        if live:
            live.pop("progress").stop()
            live.clear()

    def update(task: str, done: int, total: int) -> None:
        if total < PROGRESS_MIN_KEYS:
            return
        if live.get("task") != task:
            stop()
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            progress.start()
            live.update(progress=progress, task=task, id=progress.add_task(task, total=total))
        live["progress"].update(live["id"], completed=done, total=total)
        if done >= total:
            stop()

    try:
        yield update
    finally:
        stop()


def _identity_option(f):
    return click.option(
        "--identity", "-i", "identities", multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="age identity file (from age-keygen), for a backup made to recipients (repeat).",
    )(f)


@backup.command()
@click.option("--output", "-o", "outputs", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="A directory (e.g. a mounted USB drive) or a file name in one; repeat for "
                   "each copy.")
@click.option("--recipient", "-r", "recipients", multiple=True, metavar="AGE1...",
              help="Encrypt to this age recipient (public key) instead of a passphrase; repeat "
                   "for each custodian.")
@click.option("--recipients-file", "-R", "recipient_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of age recipients, one per line (repeat).")
@common_options
@pass_app
def create(app, outputs, recipients, recipient_files):
    """Back up every file key to each --output, read each copy back and check it.

    Encrypted to the backup passphrase ($HSMSIGN_BACKUP_PASSPHRASE, else asked twice) unless
    recipients are given. Hardware keys are listed in the manifest; they cannot leave their
    token.
    """
    from hsmsign.backup import create_backup
    from hsmsign.backup import parse_recipient, read_recipients_file

    parsed = [(r, parse_recipient(r, "--recipient")) for r in recipients]
    for f in recipient_files:
        parsed.extend(read_recipients_file(f))
    with _progress(app) as progress, collector_paused():  # 10,000 keys: see collector_paused
        result = create_backup(app.stores, list(outputs), recipients=parsed, force=app.force,
                               progress=progress)
    for warning in result.warnings:
        app.note(f"warning: {warning}")
    if app.json:
        app.emit_json(result.to_json())
        return
    manifest = result.manifest
    how = ("the backup passphrase" if result.encryption == "passphrase"
           else f"{len(result.recipients)} age recipient(s)")
    app.note(f"Backed up {len(manifest.exported)} file key(s), encrypted to {how}:")
    for a in result.archives:
        app.note(f"  {a.path}  {a.size} bytes  sha256 {a.sha256}  (read back and verified)")
    for key in manifest.hardware:
        app.note(f"  not exported: {key.role} key {key.keyid} is on {key.store} {key.location}; "
                 "it cannot leave it (listed in the manifest)")
    for a in result.archives:
        click.echo(a.path)


@backup.command()
@click.argument("archive", type=click.Path(path_type=Path))
@_identity_option
@click.option("--check-passphrases", is_flag=True,
              help="Also prove that each key file opens with its role's passphrase.")
@common_options
@pass_app
def verify(app, archive, identities, check_passphrases):
    """Decrypt ARCHIVE, check every member against its manifest, list the keys it holds."""
    from hsmsign.backup import verify_backup

    with _progress(app) as progress:
        result = verify_backup(archive, app.secrets, list(identities),
                               check_passphrases=check_passphrases, progress=progress)
    if app.json:
        app.emit_json(result.to_json())
        return
    manifest = result.manifest
    rows = [[k.role, k.gun or "", k.keyid, k.algorithm, k.store,
             "yes" if k.exported else "no (hardware)"] for k in manifest.keys]
    app.table(KEY_COLUMNS, rows, "The backup lists no keys.")
    checked = "; every key file opens with its passphrase" if check_passphrases else ""
    app.note(f"{archive}: ok, {len(manifest.exported)} file key(s) and {result.members} members "
             f"match the manifest (made {manifest.created} by hsmsign "
             f"{manifest.hsmsign_version or '?'}, encrypted to {result.encryption}){checked}")


@backup.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--home", "home_dir", type=click.Path(file_okay=False),
              help="Restore into this home (default: the global --home, $HSMSIGN_HOME, ~/.hsmsign).")
@_identity_option
@click.option("--dry-run", is_flag=True, help="Show what would be done; write nothing.")
@common_options
@pass_app
def restore(app, archive, home_dir, identities, dry_run):
    """Restore the keys of ARCHIVE into the home.

    ARCHIVE is an hsmsign backup, or a plain tar / tar.gz of a notary or docker trust dir
    (e.g. Docker's `tar -zcvf private_keys_backup.tar.gz ~/.docker/trust/private`), whose keys
    are imported under their own passphrases. Keys already there are skipped; a key with the
    same ID but a different file is a conflict: nothing is written unless --force.
    """
    from hsmsign.backup import RestoreConflict, restore_backup
    from hsmsign.config import resolve_home

    home = resolve_home(home_dir) if home_dir else app.home
    try:
        with _progress(app) as progress:
            result = restore_backup(archive, home, app.secrets, list(identities),
                                    dry_run=dry_run, force=app.force, progress=progress)
    except RestoreConflict as e:
        _show_plan(app, e.result, dry_run=True, summary=False)
        raise
    _show_plan(app, result, dry_run=dry_run)


_WORDS = {
    "add": ("would add", "added"),
    "identical": ("already there (identical)", "already there (identical)"),
    "already present": ("already there", "already there"),
    "conflict": ("CONFLICT (same ID, different file)", "CONFLICT (same ID, different file)"),
    "replace": ("would replace", "replaced"),
    "hardware": ("not in backup (hardware)", "not in backup (hardware)"),
}


def _show_plan(app, result, *, dry_run: bool, summary: bool = True) -> None:
    if app.json:
        app.emit_json(result.to_json())
        return
    rows = [[e.role, e.gun or "", e.keyid, e.algorithm, _WORDS[e.action][0 if dry_run else 1]]
            for e in result.entries]
    app.table(RESTORE_COLUMNS, rows, "The backup holds no keys.")
    sys.stdout.flush()
    if not summary:
        return
    counts: dict[str, int] = {}
    for e in result.entries:
        counts[e.action] = counts.get(e.action, 0) + 1
    text = ", ".join(f"{n} {_WORDS[a][0 if dry_run else 1]}" for a, n in counts.items())
    if dry_run:
        app.note(f"Dry run into {result.home}: {text}; nothing was written.")
    else:
        app.note(f"Restored into {result.home}: {text}.")
