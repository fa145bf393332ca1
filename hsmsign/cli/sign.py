"""`hsmsign sign` (threshold signing, one custodian at a time) and `hsmsign rotate`."""

from __future__ import annotations

import click

from hsmsign.cli.context import REPO, common_options, pass_app


@click.command()
@REPO
@click.argument("role")
@click.option("--key", "keys", multiple=True, help="Sign only with this key (repeat).")
@common_options
@pass_app
def sign(app, repo, role, keys):
    """Add this machine's signatures to ROLE's current metadata, leaving others' untouched."""
    only = {app.stores.resolve(k) for k in keys} or None
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


@click.command()
@REPO
@click.argument("role")
@click.option("--add-key", "add", multiple=True, help="Key ID or public key PEM (repeat).")
@click.option("--remove-key", "remove", multiple=True, help="Key ID (or prefix) to remove (repeat).")
@common_options
@pass_app
def rotate(app, repo, role, add, remove):
    """Replace keys of ROLE; a new root is signed by the old and the new root keys."""
    from hsmsign.cli.delegation import _keyid_in_role
    from hsmsign.errors import HsmsignError

    if not add and not remove:
        raise HsmsignError("give --add-key and/or --remove-key")
    public = [app.public_key(k) for k in add]
    with app.locked(repo):
        repository = app.repository(repo)
        repository.require()
        removed = [_keyid_in_role(repository, role, k) for k in remove]
        repository.rotate(role, public, removed)
        written = repository.commit()
    app.report_signing(repository, written)
