"""`hsmsign key ...`: generate, list, import, export, remove, passwd."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hsmsign.cli.context import common_options, pass_app
from hsmsign.keys import ALGORITHMS, DEFAULT_ALGORITHM
from hsmsign.keystore.base import StoreKind

KEY_COLUMNS = ["ROLE", "GUN", "KEY ID", "ALGORITHM", "STORE", "LOCATION"]
YUBIKEY_SLOTS = ["9a", "9c", "9d", "9e", *[f"{s:02x}" for s in range(0x82, 0x96)]]


def _use_yubikey(app, serial: str | None) -> None:
    """The YubiKey store for this command: `--serial`, and messages (touch, warnings) to stderr."""
    yubikey = app.stores.yubikey
    yubikey.notify = app.note
    if serial is not None:
        from hsmsign.keystore.yubikey import parse_serial

        yubikey.serial = parse_serial(serial)


def _row(record) -> list[str]:
    return [record.role, record.gun or "", record.keyid, record.algorithm, record.store,
            record.location]


@click.group()
def key():
    """Generate, list, import, export and remove signing keys."""


@key.command()
@click.argument("role")
@click.option("--gun", help="Globally unique name of the repository (DCT), e.g. docker.io/org/app.")
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default=DEFAULT_ALGORITHM,
              show_default=True)
@click.option("--store", type=click.Choice(["auto", *(kind.value for kind in StoreKind)]),
              default="auto", show_default=True,
              help="auto: root on a YubiKey or token when one is present, else a file; kms: a "
                   "cloud KMS (--kms).")
@click.option("--kms", "kms_provider", type=click.Choice(["aws"]),
              help="The cloud KMS that makes a --store kms key [default: aws].")
@click.option("--slot", type=click.Choice(YUBIKEY_SLOTS), help="YubiKey PIV slot [default: 9c].")
@click.option("--touch", type=click.Choice(["always", "cached", "never"]),
              help="YubiKey touch policy [default: always].")
@click.option("--pin-policy", type=click.Choice(["once", "always"]),
              help="YubiKey PIN policy [default: once].")
@click.option("--import-from-file", metavar="KEYID",
              help="Put this file key into the YubiKey slot (its encrypted file stays as the backup) "
                   "instead of generating the key on the device.")
@click.option("--serial", help="The YubiKey to use when several are plugged in.")
@common_options
@pass_app
def generate(app, role, gun, algorithm, store, kms_provider, slot, touch, pin_policy,
             import_from_file, serial):
    """Generate a new key for ROLE (root, targets, snapshot, timestamp or a delegation)."""
    from hsmsign.keys import algorithm as find_algorithm
    from hsmsign.keys import normalize_role

    role = normalize_role(role)
    _use_yubikey(app, serial)
    options = None
    if slot or touch or pin_policy or import_from_file:
        from hsmsign.keystore.yubikey import YubiKeyOptions

        options = YubiKeyOptions(slot=slot or "9c", touch=touch or "always",
                                 pin_policy=pin_policy or "once")
    if import_from_file:
        record, why = app.stores.file_key_to_yubikey(import_from_file, role, store, options)
    else:
        kms = None
        if kms_provider or store == StoreKind.KMS:
            from hsmsign.keystore.kms import KmsOptions

            kms = KmsOptions(provider=kms_provider or "aws")
        record, why = app.stores.generate(role, gun, find_algorithm(algorithm), store,
                                          yubikey=options, kms=kms)
    _report_new_key(app, "Imported" if import_from_file else "Generated", role, record, why)


def _report_new_key(app, verb: str, role: str, record, why: str | None = None) -> None:
    """The notes on stderr and the key ID (or the record as JSON) on stdout for a new key."""
    app.note(f"{verb} {record.algorithm} {role} key {record.keyid}")
    app.note(f"  stored in {record.store} {record.location}")
    if why is not None:
        app.note(f"  because {why}")
    if app.json:
        app.emit_json(record.to_json())
    else:
        click.echo(record.keyid)


@key.command("list")
@common_options
@pass_app
def list_(app):
    """Every key in every store; never asks for a passphrase."""
    app.stores.yubikey.notify = None  # its warnings come with the listing
    listing = app.stores.list_keys()
    for warning in listing.warnings:
        app.note(f"warning: {warning}")
    keys = sorted(listing.keys, key=lambda r: (r.role, r.gun or "", r.keyid, r.store))
    if app.json:
        app.emit_json([r.to_json() for r in keys])
    else:
        app.table(KEY_COLUMNS, [_row(r) for r in keys], "No keys. Create one with `hsmsign key generate ROLE`.")


@key.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--role", help="Role of the key(s), when the file does not say.")
@click.option("--gun", help="GUN of the key(s), when the file does not say.")
@click.option("--store", type=click.Choice([StoreKind.FILE.value, StoreKind.TOKEN.value]),
              default=StoreKind.FILE.value, show_default=True)
@common_options
@pass_app
def import_(app, path, role, gun, store):
    """Import a PEM private key, or every key of a notary / docker trust dir."""
    from hsmsign.keystore.importing import import_keys

    results = import_keys(app.stores, path, role=role, gun=gun, store=store)
    if app.json:
        app.emit_json([r.to_json() for r in results])
        return
    for r in results:
        where = f" (gun {r.gun})" if r.gun else ""
        app.note(f"{r.path}: {r.action} {r.role} key{where} as {r.keyid} [{r.store}]")


@key.command()
@click.argument("keyid")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
@click.option("--private", is_flag=True, help="Export the private key (encrypted).")
@click.option("--format", "format_", type=click.Choice(["pem", "notary"]), default="pem",
              show_default=True, help="notary: what notary / `docker trust key load` reads.")
@common_options
@pass_app
def export(app, keyid, output, private, format_):
    """Export a key: its public key PEM, or with --private --format notary the encrypted key."""
    from hsmsign.errors import HsmsignError
    from hsmsign.fsutil import atomic_write
    from hsmsign.keys import public_key_pem

    if output is not None and output.exists() and not app.force:
        raise HsmsignError(f"{output} already exists; choose another name, or --force to "
                           "replace it")
    stores = app.stores
    keyid = stores.resolve(keyid)
    if private:
        if format_ != "notary":
            raise HsmsignError("a private key is exported only as --format notary")
        located = stores.locate(keyid)
        if StoreKind.FILE not in [r.store for r in located]:
            where = ("in a cloud KMS" if located[0].store == StoreKind.KMS
                     else "on a hardware token")
            raise HsmsignError(f"key {keyid} is {where} and cannot leave it")
        data = stores.files.notary_export(keyid)
    else:
        data = public_key_pem(stores.public_key(keyid))
    if output is not None:
        atomic_write(output, data, mode=0o600 if private else 0o644)
        app.note(f"Wrote {'private' if private else 'public'} key {keyid} to {output}")
    if app.json:
        app.emit_json({"keyid": keyid, "private": private, "format": format_,
                       "output": str(output) if output else None,
                       **({} if output else {"pem": data.decode()})})
    elif output is None:
        sys.stdout.buffer.write(data)


@key.command("add-uri")
@click.argument("uri")
@click.option("--role", required=True, help="The role the key signs for.")
@click.option("--gun", help="Globally unique name of the repository (DCT).")
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False, exists=True,
                                                            path_type=Path),
              help="The key's public key PEM, when it is not to be fetched from the service.")
@common_options
@pass_app
def add_uri(app, uri, role, gun, public_key):
    """Register a cloud KMS key by its URI (awskms:, gcpkms:, azurekms:, hv:)."""
    from hsmsign.keys import normalize_role

    role = normalize_role(role)
    pem = public_key.read_bytes() if public_key is not None else None
    record = app.stores.kms.add_uri(uri, role, gun, pem)
    _report_new_key(app, "Registered", role, record)


@key.command()
@click.argument("keyid")
@click.option("--schedule-deletion", "deletion_days", type=int, metavar="DAYS",
              help="Also schedule the AWS KMS key's deletion after DAYS (7 to 30) days.")
@common_options
@pass_app
def remove(app, keyid, deletion_days):
    """Remove a key from every store that holds it (asks first; --force does not ask). A KMS
    key's record is forgotten; the key itself stays in the KMS unless --schedule-deletion."""
    from hsmsign.errors import HsmsignError

    stores = app.stores
    keyid = stores.resolve(keyid)
    records = stores.locate(keyid)
    if deletion_days is not None and StoreKind.KMS not in [r.store for r in records]:
        raise HsmsignError(f"--schedule-deletion applies to KMS keys; key {keyid} is not one")
    where = ", ".join(f"{r.store} {r.location}" for r in records)
    if not app.force:
        if not sys.stdin.isatty():
            raise HsmsignError(f"removing {keyid} cannot be undone; re-run with --force to confirm")
        click.confirm(f"Remove {records[0].role} key {keyid} from {where}? This cannot be undone",
                      abort=True, err=True)
    if deletion_days is not None:
        stores.kms.schedule_deletion(keyid, deletion_days)  # first: a failure changes nothing
        app.note(f"Scheduled the deletion of {stores.kms.uri(keyid)} in {deletion_days} days")
    removed = stores.remove(keyid)
    if app.json:
        app.emit_json([r.to_json() for r in removed])
    else:
        app.note(f"Removed key {keyid} from {where}")


@key.command()
@click.argument("keyid")
@common_options
@pass_app
def passwd(app, keyid):
    """Change the passphrase of a key file (new passphrase from $HSMSIGN_NEW_PASSPHRASE or a prompt)."""
    from hsmsign.errors import HsmsignError

    stores = app.stores
    keyid = stores.resolve(keyid)
    if keyid not in stores.files.keyids():
        raise HsmsignError(f"key {keyid} is not a file key; a token key is protected by the token's PIN")
    record = stores.files.record(keyid)
    stores.files.private_key(keyid)  # the old passphrase first
    new = app.secrets.ask_new_passphrase(f"{record.role} key {keyid[:7]}", ["HSMSIGN_NEW_PASSPHRASE"])
    record = stores.files.change_passphrase(keyid, new)
    if app.json:
        app.emit_json(record.to_json())
    else:
        app.note(f"Changed the passphrase of {record.role} key {keyid}")


@key.command()
@click.argument("keyid")
@click.option("--certificate", "attestation",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The slot's attestation certificate (`ykman piv keys attest 9c FILE`), or a "
                   "PEM file with it and the device's after it (what a ceremony writes in "
                   "REPO/attestations/); default: read from the YubiKey holding KEYID.")
@click.option("--intermediate",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The device's attestation certificate (`ykman piv certificates export f9 FILE`); "
                   "default: read from the YubiKey.")
@click.option("--trust-roots", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Extra attestation roots beside the bundled Yubico ones (e.g. a test CA).")
@click.option("--repo", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Also require KEYID to be a root key of this repository's current root.")
@click.option("--serial", help="The YubiKey to read from when several are plugged in.")
@common_options
@pass_app
def attest(app, keyid, attestation, intermediate, trust_roots, repo, serial):
    """Verify a YubiKey attestation and that it attests KEYID (the key in the metadata)."""
    from hsmsign.errors import HsmsignError
    from hsmsign.keystore.attestation import attest_key, load_certificates, read_trust_roots

    bundle = None
    if attestation is not None and intermediate is None:
        bundle = load_certificates(attestation.read_bytes())
        if len(bundle) < 2:
            raise HsmsignError("give --intermediate too (the device's certificate, slot f9), or a "
                               "--certificate file that holds both")
    elif attestation is None and intermediate is not None:
        raise HsmsignError("give --certificate with --intermediate, or neither (then both are "
                           "read from the YubiKey)")
    _use_yubikey(app, serial)
    keyid = app.stores.resolve(keyid) if len(keyid) < 64 else keyid.lower()
    if repo is not None:
        repository = app.existing_repository(repo)
        root_keys, _ = repository.role_keys("root", repository.open("root"))
        if keyid not in root_keys:
            raise HsmsignError(f"key {keyid[:16]}... is not a root key of {repo}")
    extra = read_trust_roots(trust_roots) if trust_roots else []
    certificates = None
    if bundle is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        certificates = tuple(c.public_bytes(Encoding.DER) for c in bundle[:2])
    elif attestation is not None:
        certificates = (attestation.read_bytes(), intermediate.read_bytes())
    result = attest_key(app.stores.yubikey, keyid, certificates, extra_trust=extra)
    if app.json:
        app.emit_json(result.to_json())
        return
    app.table(["ATTESTED", ""], [
        ["key ID", result.keyid], ["serial", str(result.serial)], ["firmware", str(result.firmware)],
        ["PIN policy", str(result.pin_policy)], ["touch policy", str(result.touch_policy)],
        ["form factor", str(result.form_factor)], ["chain", " <- ".join(result.chain)]], "")
