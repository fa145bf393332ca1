"""`hsmsign delegation ...` and DCT's `hsmsign signer ...`."""

from __future__ import annotations

import click

from hsmsign.cli.context import REPO, common_options, pass_app


@click.group()
def delegation():
    """Delegate targets to other keys: add, remove, list."""


@delegation.command()
@REPO
@click.argument("role")
@click.option("--key", "keys", multiple=True, required=True, help="Key ID or public key PEM (repeat).")
@click.option("--path", "paths", multiple=True, help="Path pattern the role may sign (repeat; default '*').")
@click.option("--threshold", type=int, help="Signatures needed (default 1).")
@click.option("--terminating", is_flag=True, help="Stop the search for targets at this role.")
@click.option("--from", "parent", default="targets", show_default=True, help="The delegating role.")
@common_options
@pass_app
def add(app, repo, role, keys, paths, threshold, terminating, parent):
    """Delegate ROLE to keys, or add keys and paths to an existing delegation."""
    public = [app.public_key(k) for k in keys]
    with app.locked(repo):
        repository = app.repository(repo)
        new = repository.add_delegation(role, public, paths=list(paths) or None,
                                        threshold=threshold, terminating=terminating,
                                        parent=parent)
        written = repository.commit()
    if not app.json:
        app.note(f"{'delegated' if new else 'updated'} {role} from {parent}")
    app.report_signing(repository, written)


@delegation.command()
@REPO
@click.argument("role")
@click.option("--key", help="Remove only this key from the role.")
@common_options
@pass_app
def remove(app, repo, role, key):
    """Remove a delegation, or one key of it."""
    with app.locked(repo):
        repository = app.repository(repo)
        keyid = _keyid_in_role(repository, role, key) if key else None
        warnings = repository.remove_delegation(role, keyid)
        written = repository.commit()
    for warning in warnings:
        app.note(f"warning: {warning}")
    app.report_signing(repository, written)


def _keyid_in_role(repository, role: str, key: str) -> str:
    """A key ID of `role` from a full ID, a unique prefix, or a public key PEM."""
    import os

    from hsmsign.errors import HsmsignError
    from hsmsign.keys import load_public_key_file, tuf_key

    if os.path.isfile(key):
        return tuf_key(load_public_key_file(key)).keyid
    repository.require_role(role)
    keyids, _ = repository.role_keys(role)
    matches = [k for k in keyids if k.startswith(key.lower())] if len(key) >= 7 else []
    if len(matches) != 1:
        raise HsmsignError(f"{key!r} matches {len(matches)} keys of {role}; give a longer key ID")
    return matches[0]


@delegation.command("list")
@REPO
@common_options
@pass_app
def list_(app, repo):
    """Every delegation: who delegates it, keys, threshold, paths."""
    repository = app.existing_repository(repo)
    rows = []
    for role, parent in sorted(repository.parents().items()):
        spec = repository.delegated_role(role)
        rows.append({"role": role, "delegated_by": parent, "threshold": spec.threshold,
                     "keyids": list(spec.keyids), "paths": list(spec.paths or []),
                     "terminating": spec.terminating})
    if app.json:
        app.emit_json(rows)
        return
    app.table(["ROLE", "FROM", "THRESHOLD", "KEY IDS", "PATHS"],
              [[r["role"], r["delegated_by"], str(r["threshold"]),
                ", ".join(k[:7] for k in r["keyids"]), ", ".join(r["paths"])] for r in rows],
              "No delegations.")


@click.group()
def signer():
    """DCT signers: `signer add NAME --key PEM REPO` adds the key to `releases` and to `NAME`."""


@signer.command("add")
@click.argument("name")
@click.option("--key", "keys", multiple=True, required=True, help="Public key PEM or key ID (repeat).")
@click.option("--path", "paths", multiple=True, metavar="PATTERN",
              help="Targets both roles may sign (repeat; default '*': every name without a '/', "
                   "as DCT's tags).")
@REPO
@common_options
@pass_app
def signer_add(app, name, keys, paths, repo):
    """Add signer NAME: its keys join the releases delegation and a delegation named NAME."""
    from hsmsign.repository.dct import RELEASES, add_signer

    public = [app.public_key(k) for k in keys]
    with app.locked(repo):
        repository = app.repository(repo)
        add_signer(repository, name, public, paths)
        written = repository.commit()
    if not app.json:
        app.note(f"added signer {name} ({', '.join(k.keyid[:7] for k in public)}) to {RELEASES} and {name}")
    app.report_signing(repository, written)


@signer.command("remove")
@click.argument("name")
@REPO
@common_options
@pass_app
def signer_remove(app, name, repo):
    """Remove signer NAME: its delegation, and its keys from releases."""
    from hsmsign.repository.dct import remove_signer

    with app.locked(repo):
        repository = app.repository(repo)
        warnings = remove_signer(repository, name)
        written = repository.commit()
    for warning in warnings:
        app.note(f"warning: {warning}")
    app.report_signing(repository, written)
