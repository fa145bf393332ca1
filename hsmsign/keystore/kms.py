"""Keys in a cloud KMS (AWS KMS, Google Cloud KMS, Azure Key Vault, HashiCorp Vault), through
securesystemslib's signers (`AWSSigner`, `GCPSigner`, `AzureSigner`, `VaultSigner`): the private
key is made in the service and never leaves it; hsmsign keeps a record of each key.

    <home>/kms.json   {"version": 1, "keys": {KEYID: {"uri", "public_key", "role", "gun",
                      "algorithm"}}}, 0600, written atomically

A record holds no secret: the service's credentials are its SDK's own (environment variables, a
profile, an instance role). Listing reads the records only and never contacts the service.
Signing checks every signature against the recorded public key, so a key that changed behind
its URI (an alias moved to another key) is caught before anything is written.

One signer per key and one AWS KMS client per process, made on first use: every signature
of a command goes over the same client (and its connection pool), none makes a client.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign.config import ensure_home
from hsmsign.errors import HsmsignError, KeyNotFound
from hsmsign.fsutil import atomic_write
from hsmsign.keys import (
    Algorithm,
    KeyRecord,
    algorithm_of,
    key_id,
    load_public_key_pem,
    public_key_pem,
)
from hsmsign.keystore.base import KeyStore, Listing, StoreContext, StoreKind

if TYPE_CHECKING:  # securesystemslib.signer loads every cloud SDK: only when signing
    from securesystemslib.signer import Key, Signature, Signer

from hsmsign.keystore.kms_errors import (  # the errors: importable from here too
    SERVICES,
    KmsCredentialsError,
    KmsError,
    KmsKeyMismatch,
    KmsKeyUnusable,
    KmsLibraryMissing,
    KmsUnreachable,
    Service,
    aws_errors,
    require_library,
    service_errors,
)

logger = logging.getLogger(__name__)

STORE = StoreKind.KMS
RECORDS = "kms.json"
MIN_DELETION_DAYS, MAX_DELETION_DAYS = 7, 30  # AWS KMS's pending window


PROVIDERS = {"aws": "awskms"}  # `key generate --store kms --kms NAME`


@dataclass(frozen=True)
class KmsOptions:
    """`key generate --store kms`: which service makes the key."""

    provider: str = "aws"


def service_of(uri: str) -> Service:
    scheme = uri.split(":", 1)[0]
    if scheme not in SERVICES or ":" not in uri:
        raise HsmsignError(f"{uri!r} is not a KMS key URI; give one of "
                           f"{', '.join(s + ':...' for s in SERVICES)} (securesystemslib's schemes)")
    return SERVICES[scheme]


class KmsKeyStore(KeyStore):
    """The KMS keys this home knows, by their records."""

    kind = STORE

    @classmethod
    def for_home(cls, context: StoreContext) -> KmsKeyStore:
        return cls(context.home)  # cloud KMS keys, by their records (no service contacted)

    def enabled(self) -> bool:
        return True  # a home without kms.json simply has no KMS keys

    def listing(self) -> Listing:
        return Listing(keys=self.list_keys())

    def reason_asked(self) -> str:
        return "asked for a KMS key"

    def reason_auto_root(self, file_option: str) -> str | None:
        return None  # a KMS key is made only when asked for

    def __init__(self, home: Path):
        self.home = home
        self.path = home / RECORDS
        self._records: dict[str, dict] | None = None
        self._aws_client = None
        self._signers: dict[str, Signer] = {}

    # -- records -----------------------------------------------------------------------

    def _load(self) -> dict[str, dict]:
        if self._records is None:
            if not self.path.exists():
                self._records = {}
            else:
                try:
                    data = json.loads(self.path.read_text())
                    self._records = dict(data["keys"])
                except (ValueError, KeyError, TypeError) as e:
                    raise HsmsignError(f"{self.path} is not a KMS key record file ({e}); "
                                       "restore it from a backup") from None
        return self._records

    def _save(self, records: dict[str, dict]) -> None:
        ensure_home(self.home)
        data = json.dumps({"version": 1, "keys": records}, indent=2, sort_keys=True) + "\n"
        atomic_write(self.path, data.encode(), mode=0o600)
        self._records = records

    def keyids(self) -> list[str]:
        return list(self._load())

    def _entry(self, keyid: str) -> dict:
        try:
            return self._load()[keyid]
        except KeyError:
            raise KeyNotFound(f"key {keyid} is not a KMS key of this home") from None

    def record(self, keyid: str) -> KeyRecord:
        entry = self._entry(keyid)
        return KeyRecord(keyid=keyid, role=entry["role"], gun=entry.get("gun"),
                         algorithm=entry["algorithm"], store=STORE, location=entry["uri"])

    def list_keys(self) -> list[KeyRecord]:
        return [self.record(k) for k in self._load()]

    def public_key(self, keyid: str):
        return load_public_key_pem(self._entry(keyid)["public_key"].encode())

    def uri(self, keyid: str) -> str:
        return self._entry(keyid)["uri"]

    def is_present(self) -> bool:
        return True  # records are always here; the service is reached when a key signs

    def require_present(self) -> None:
        return None

    def close(self) -> None:
        self._signers.clear()

    # -- changes -----------------------------------------------------------------------

    def _add(self, uri: str, public_key, role: str, gun: str | None) -> KeyRecord:
        keyid = key_id(public_key)
        records = dict(self._load())
        if keyid in records:
            raise HsmsignError(f"key {keyid} is already recorded (as {records[keyid]['uri']}); "
                               "nothing changed")
        records[keyid] = {"uri": uri, "public_key": public_key_pem(public_key).decode(),
                          "role": role, "gun": gun, "algorithm": algorithm_of(public_key).name}
        self._save(records)
        return self.record(keyid)

    def generate(self, role: str, alg: Algorithm, options: KmsOptions | None = None, *,
                 gun: str | None = None) -> KeyRecord:
        """A new ECC_NIST_P256 SIGN_VERIFY key made in AWS KMS, named by an alias and tags."""
        provider = (options or KmsOptions()).provider
        if provider not in PROVIDERS:
            raise HsmsignError(f"--kms {provider}: hsmsign makes keys in AWS KMS only (--kms aws); "
                               "make a Google Cloud KMS, Azure Key Vault or Vault key there and "
                               "register it with `hsmsign key add-uri URI --role ROLE`")
        if alg.name != "ecdsa-p256":
            raise HsmsignError(f"KMS keys are ecdsa-p256 (ECC_NIST_P256); drop --algorithm {alg.name}")
        service = SERVICES[PROVIDERS[provider]]
        require_library(service)
        from securesystemslib.signer import AWSSigner

        client = self._client()
        tags = [{"TagKey": "hsmsign:role", "TagValue": role}]
        if gun:
            tags.append({"TagKey": "hsmsign:gun", "TagValue": gun})
        described = f"hsmsign {role} key" + (f" for {gun}" if gun else "")
        with aws_errors(client, "creating a key"):
            created = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                                        Description=described, Tags=tags)["KeyMetadata"]
        try:
            with aws_errors(client, "naming the new key"):
                client.create_alias(AliasName=alias_name(role, gun, created["KeyId"]),
                                    TargetKeyId=created["KeyId"])
            with aws_errors(client, "reading the new key's public key"):
                uri, public = AWSSigner.import_(created["Arn"], "ecdsa-sha2-nistp256")
            return self._add(uri, load_public_key_pem(public.keyval["public"].encode()), role, gun)
        except BaseException:
            # A key nobody has a record of is of no use: schedule its deletion (AWS's minimum
            # window, so that it can still be cancelled) before reporting the failure.
            try:
                client.schedule_key_deletion(KeyId=created["KeyId"],
                                             PendingWindowInDays=MIN_DELETION_DAYS)
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                logger.warning("could not schedule the deletion of %s", created["Arn"])
            raise

    def add_uri(self, uri: str, role: str, gun: str | None = None,
                public_pem: bytes | None = None) -> KeyRecord:
        """Record an existing key by its securesystemslib URI, its public key fetched from the
        service (or given, e.g. from `gcloud kms keys versions get-public-key`)."""
        service = service_of(uri)
        if public_pem is not None:
            return self._add(uri, load_public_key_pem(public_pem), role, gun)
        require_library(service)
        uri, public = _import(service, uri, self)
        return self._add(uri, load_public_key_pem(public.keyval["public"].encode()), role, gun)

    def remove(self, keyid: str) -> None:
        """Forget the record (the key stays in the service; see `schedule_deletion`)."""
        records = dict(self._load())
        if keyid not in records:
            raise KeyNotFound(f"key {keyid} is not a KMS key of this home")
        del records[keyid]
        self._save(records)
        self._signers.pop(keyid, None)

    def schedule_deletion(self, keyid: str, days: int) -> None:
        """Schedule the deletion of an AWS KMS key (AWS keeps it `days` more, cancellable)."""
        uri = self.uri(keyid)
        service = service_of(uri)
        if service.scheme != "awskms":
            raise HsmsignError(f"--schedule-deletion applies to AWS KMS keys; delete {uri} in "
                               f"{service.name} itself")
        if not MIN_DELETION_DAYS <= days <= MAX_DELETION_DAYS:
            raise HsmsignError(f"--schedule-deletion takes {MIN_DELETION_DAYS} to "
                               f"{MAX_DELETION_DAYS} days (AWS KMS's waiting period)")
        require_library(service)
        client = self._client()
        with aws_errors(client, f"scheduling the deletion of {uri}", uri):
            # An alias may have been moved to another key since it was recorded: delete the
            # key it names only when that key's public key is the recorded one.
            target = client.describe_key(KeyId=_aws_key(uri))["KeyMetadata"]["KeyId"]
            from cryptography.hazmat.primitives.serialization import load_der_public_key

            der = client.get_public_key(KeyId=target)["PublicKey"]
            if key_id(load_der_public_key(der)) != keyid:
                raise KmsKeyMismatch(f"the key behind {uri} is no longer the one recorded for "
                                     f"{keyid[:7]}; not scheduling its deletion, and nothing "
                                     "was changed")
            client.schedule_key_deletion(KeyId=target, PendingWindowInDays=days)

    def import_key(self, key, role: str, options=None, *, gun: str | None = None,
                   passphrase: str | None = None) -> KeyRecord:
        raise HsmsignError("a private key cannot be put into a KMS: KMS keys are made there "
                           "(`key generate --store kms`) and registered (`key add-uri`); rotate "
                           "to a new key instead of moving one")

    # -- signing -----------------------------------------------------------------------

    def _client(self):
        """The one AWS KMS client of this process (boto3 reads endpoint, region and
        credentials from the environment, e.g. AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE)."""
        if self._aws_client is None:
            import boto3
            from botocore.exceptions import NoRegionError

            try:
                self._aws_client = boto3.client("kms")
            except NoRegionError:
                raise KmsError("no AWS region is set: set AWS_REGION (or AWS_DEFAULT_REGION, "
                               "or a profile's region)") from None
        return self._aws_client

    def signer(self, keyid: str, public_key: Key | None = None) -> Signer:
        from hsmsign.keystore.signers import KmsSigner

        return KmsSigner(self, keyid, public_key)

    def _service_signer(self, keyid: str, public_key: Key) -> Signer:
        """securesystemslib's signer for the key, made once per process."""
        signer = self._signers.get(keyid)
        if signer is None:
            from securesystemslib.signer import Signer

            uri = self.uri(keyid)
            service = service_of(uri)
            require_library(service)
            if service.scheme == "awskms":
                self._client()  # the region check, with hsmsign's message
            with service_errors(service, f"opening {uri}", uri, self._aws_client):
                signer = Signer.from_priv_key_uri(uri, public_key)
            if service.scheme == "awskms":
                signer.client = self._client()  # AWSSigner's public attribute: one client
            self._signers[keyid] = signer
        return signer

    def sign(self, keyid: str, public_key: Key, payload: bytes) -> Signature:
        from securesystemslib.exceptions import UnverifiedSignatureError

        uri = self.uri(keyid)
        service = service_of(uri)
        signer = self._service_signer(keyid, public_key)
        with service_errors(service, f"signing with {uri}", uri, self._aws_client):
            signature = signer.sign(payload)
        try:
            public_key.verify_signature(signature, payload)
        except UnverifiedSignatureError:
            raise self._mismatch(keyid, service) from None
        return signature

    def _mismatch(self, keyid: str, service: Service) -> KmsError:
        """Why a signature from the service does not verify with the recorded key."""
        uri = self.uri(keyid)
        try:
            _, public = _import(service, uri, self)
            current = key_id(load_public_key_pem(public.keyval["public"].encode()))
        except HsmsignError:
            current = None
        if current is not None and current != keyid:
            return KmsKeyMismatch(
                f"the key behind {uri} is no longer the one recorded for {keyid[:7]} (its public "
                f"key is now {current[:7]}): the alias was moved or the key replaced; nothing was "
                "signed. Point it back, or register the new key with `hsmsign key add-uri` and "
                "rotate the role to it")
        return KmsError(f"{service.name} returned a signature for {uri} that does not verify "
                        f"with the recorded public key of {keyid[:7]}; nothing was signed")


def alias_name(role: str, gun: str | None, aws_key_id: str) -> str:
    """`alias/hsmsign/<gun>/<role>-<first 8 of the key ID>`: AWS aliases allow letters, digits,
    `/`, `_` and `-`, and must be unique in the account and region."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9/_-]", "-", text).strip("/") or "-"

    return f"alias/hsmsign/{clean(gun) if gun else 'no-gun'}/{clean(role)}-{aws_key_id[:8]}"


def _aws_key(uri: str) -> str:
    return uri.split(":", 1)[1]


def _import(service: Service, uri: str, store: KmsKeyStore) -> tuple[str, Key]:
    """(URI, public key) from the service, through securesystemslib's `import_`."""
    from urllib.parse import urlparse

    rest = uri.split(":", 1)[1]
    client = store._client() if service.scheme == "awskms" else None  # the region check first
    with service_errors(service, f"reading the public key of {uri}", uri, client):
        if service.scheme == "awskms":
            from securesystemslib.signer import AWSSigner

            _, public = AWSSigner.import_(rest)
            return uri, public
        if service.scheme == "gcpkms":
            from securesystemslib.signer import GCPSigner

            return GCPSigner.import_(rest)
        if service.scheme == "azurekms":
            from securesystemslib.signer import AzureSigner

            parsed = urlparse(uri)
            parts = parsed.path.strip("/").split("/")
            if not parsed.hostname or len(parts) < 2 or parts[0] != "keys":
                raise HsmsignError(f"{uri!r}: give azurekms://VAULT.vault.azure.net/keys/NAME")
            return AzureSigner.import_(parsed.hostname.split(".")[0], parts[1])
        from securesystemslib.signer import VaultSigner

        return VaultSigner.import_(rest.split("/")[0])


__all__ = ["KmsCredentialsError", "KmsError", "KmsKeyMismatch", "KmsKeyStore", "KmsKeyUnusable",
           "KmsLibraryMissing", "KmsOptions", "KmsUnreachable", "SERVICES"]
