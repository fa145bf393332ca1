"""`hsmsign sign` (threshold signing, one custodian at a time) and `hsmsign rotate`."""

from __future__ import annotations

from pathlib import Path

import click

from hsmsign.cli.context import REPO, common_options, pass_app


@click.command()
@click.argument("repo", required=False, type=click.Path(path_type=Path))
@click.argument("role", required=False)
@click.option("--key", "keys", multiple=True, help="Sign only with this key (repeat).")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="Sign this lone metadata file in place (a copy from `stage export`), not a repository.")
@click.option("--role", "file_role", help="With --file: the file's role (default: from its name or _type).")
@click.option("--previous", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --file on a root: the root before it, whose keys sign too.")
@common_options
@pass_app
def sign(app, repo, role, keys, file, file_role, previous):
    """Add this machine's signatures to ROLE: its staged version when there is one (published
    once every threshold is met), else the published one. Or, with --file, a lone file."""
    from hsmsign.errors import HsmsignError

    only = {app.resolve_key(k) for k in keys} or None
    if file is not None:
        if repo is not None or role is not None:
            raise HsmsignError("give either REPO ROLE or --file FILE, not both")
        return _sign_file(app, file, file_role, previous, only)
    if repo is None or role is None:
        raise HsmsignError("give REPO and ROLE (or --file FILE for a lone metadata file)")
    if file_role or previous:
        raise HsmsignError("--role and --previous go with --file; for a repository give REPO ROLE")
    with app.locked(repo):
        repository = app.repository(repo, only=only)
        repository.require()
        report = repository.sign_current(role)
        written = repository.commit()
    if not report.signed_here and not app.json:
        here = [k for k in repository.signing.available(report.authorized) if k in report.valid]
        if here:
            app.note(f"{role} v{report.version} is already signed by the key(s) here "
                     f"({', '.join(k[:7] for k in here)}); nothing changed")
        else:
            where = app.stores.elsewhere(report.unsigned_keys)
            app.note(f"no key of {role} is here{where}; nothing changed")
    app.report_signing(repository, written)


def _sign_file(app, file, role, previous, only) -> None:
    from hsmsign.repository.lone_file import sign_file
    from hsmsign.signing import SigningService

    service = SigningService(app.stores, only=only, remote=app.remote_keys)
    report = sign_file(file, service, role=role, previous=previous,
                       keyids=sorted(only) if only else None)
    if app.json:
        app.emit_json({"file": str(file), "signing": report.to_json()})
        return
    here = ", ".join(k[:7] for k in report.signed_here)
    if here:
        app.note(f"signed {file} ({report.role} v{report.version}) with: {here}; "
                 "carry it back for `hsmsign stage merge`")
    else:
        hint = ("; a key of the root before it signs with --previous ROOT_FILE"
                if report.role == "root" and previous is None else "")
        app.note(f"no key here signs {report.role} v{report.version} in {file} "
                 f"(already signed, or none of its keys is here{hint}); nothing changed")
    app.note(f"{report.role} v{report.version}: {len(report.valid)} valid signature(s) by its "
             f"keys: {', '.join(k[:7] for k in report.valid) or 'none'}")


@click.command()
@REPO
@click.argument("role")
@click.option("--add-key", "add", multiple=True, help="Key ID or public key PEM (repeat).")
@click.option("--remove-key", "remove", multiple=True, help="Key ID (or prefix) to remove (repeat).")
@click.option("--threshold", type=int, help="The role's new threshold (default: unchanged).")
@common_options
@pass_app
def rotate(app, repo, role, add, remove, threshold):
    """Replace keys of ROLE; a new root is signed by the old and the new root keys."""
    from hsmsign.cli.delegation import _keyid_in_role
    from hsmsign.errors import HsmsignError

    if not add and not remove and threshold is None:
        raise HsmsignError("give --add-key, --remove-key and/or --threshold")
    public = [app.public_key(k) for k in add]
    with app.locked(repo):
        repository = app.repository(repo)
        repository.require()
        removed = [_keyid_in_role(repository, role, k) for k in remove]
        repository.rotate(role, public, removed, threshold)
        written = repository.commit()
    app.report_signing(repository, written)
