"""The cloud KMS services hsmsign reaches through securesystemslib, and what their SDKs'
failures mean: one typed `KmsError` each, saying what went wrong and what to do (an `error:`
line), never the SDK's traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hsmsign.errors import HsmsignError


@dataclass(frozen=True)
class Service:
    scheme: str  # securesystemslib's URI scheme
    name: str
    extra: str  # `pip install 'hsmsign[EXTRA]'`
    module: str  # what the extra installs, to check for


SERVICES = {
    "awskms": Service("awskms", "AWS KMS", "kms", "boto3"),
    "gcpkms": Service("gcpkms", "Google Cloud KMS", "kms-gcp", "google.cloud.kms"),
    "azurekms": Service("azurekms", "Azure Key Vault", "kms-azure", "azure.keyvault.keys"),
    "hv": Service("hv", "HashiCorp Vault", "kms-vault", "hvac"),
}


class KmsError(HsmsignError):
    """A cloud KMS could not be used."""


class KmsLibraryMissing(KmsError):
    """The optional extra with the service's library is not installed."""

    def __init__(self, service: Service):
        super().__init__(f"{service.name} keys need the optional cloud libraries: "
                         f"pip install 'hsmsign[{service.extra}]'")
        self.extra = service.extra


class KmsUnreachable(KmsError):
    """The service's endpoint did not answer."""


class KmsCredentialsError(KmsError):
    """No credentials, or the service refused them (or their permissions)."""


class KmsKeyUnusable(KmsError):
    """The key is disabled, pending deletion or deleted in the service."""


class KmsKeyMismatch(KmsError):
    """The key behind the URI is no longer the one recorded."""


def require_library(service: Service) -> None:
    import importlib

    try:
        importlib.import_module(service.module)
    except ImportError:
        raise KmsLibraryMissing(service) from None


class service_errors:
    """Turn a cloud SDK's exception into one KmsError saying what and what to do (`client`:
    the AWS client, whose endpoint the message names)."""

    def __init__(self, service: Service, doing: str, uri: str | None = None, client: Any = None):
        self.service, self.doing, self.uri, self.client = service, doing, uri, client

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _tb):
        if error is None or isinstance(error, HsmsignError) or not isinstance(error, Exception):
            return False
        if self.service.scheme == "awskms":
            translated = _aws_error(error, self.doing, self.client, self.uri)
        else:
            translated = _other_error(error, self.service, self.doing)
        if translated is None:
            return False
        raise translated from None


def aws_errors(client, doing: str, uri: str | None = None):
    return service_errors(SERVICES["awskms"], doing, uri, client)


# Error codes with which AWS refuses the credentials themselves (not their permissions).
_REFUSED = {"UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
            "SignatureDoesNotMatch", "ExpiredTokenException", "IncompleteSignature",
            "InvalidAccessKeyId", "AuthFailure"}


def _aws_error(error: Exception, doing: str, client: Any, uri: str | None) -> KmsError | None:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "AWS KMS"
    key = f"key {uri}" if uri else "the key"
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                          ConnectionClosedError)):
        return KmsUnreachable(f"cannot reach AWS KMS at {endpoint} while {doing}; check the "
                              "network, AWS_ENDPOINT_URL and the region, then run the command "
                              "again (nothing was written)")
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return KmsCredentialsError(f"no AWS credentials for {doing}: set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an IAM "
                                   "role applies")
    if isinstance(error, NoRegionError):
        return KmsError("no AWS region is set: set AWS_REGION (or AWS_DEFAULT_REGION)")
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _REFUSED or (status == 403 and code != "AccessDeniedException"):
            return KmsCredentialsError(f"AWS KMS at {endpoint} refused the credentials while "
                                       f"{doing} ({code or status}); check AWS_ACCESS_KEY_ID / "
                                       "AWS_SECRET_ACCESS_KEY or the profile")
        if code == "AccessDeniedException":
            return KmsCredentialsError(f"AWS KMS denied {doing}: the credentials' IAM policy must "
                                       "allow it (kms:Sign and kms:GetPublicKey to sign; "
                                       "kms:CreateKey, kms:CreateAlias and kms:TagResource to "
                                       "generate; docs/kms.md)")
        if code == "DisabledException":
            return KmsKeyUnusable(f"{key} is disabled in AWS KMS; enable it (aws kms enable-key) "
                                  "or rotate the role to another key; nothing was written")
        if code == "KMSInvalidStateException":
            return KmsKeyUnusable(f"{key} cannot be used in its state in AWS KMS (pending "
                                  "deletion?); cancel the deletion and enable it, or rotate the "
                                  "role to another key; nothing was written")
        if code == "NotFoundException":
            return KmsKeyUnusable(f"{key} does not exist in AWS KMS (deleted, or another account "
                                  "or region?); rotate the role to another key and forget this "
                                  "one with `hsmsign key remove`; nothing was written")
        if status and status >= 500:
            return KmsError(f"AWS KMS at {endpoint} failed while {doing} (HTTP {status}); "
                            "try again later (nothing was written)")
        return KmsError(f"AWS KMS refused {doing} ({code}: {details.get('Message', '')[:200]})")
    if isinstance(error, BotoCoreError):
        return KmsError(f"AWS KMS: {doing} failed ({type(error).__name__}: {error})")
    return None


def _other_error(error: Exception, service: Service, doing: str) -> KmsError | None:
    """Google Cloud, Azure and Vault: their SDKs' errors differ; a connection failure is named as
    one, anything else says which service failed and how."""
    from securesystemslib.exceptions import UnsupportedLibraryError

    if isinstance(error, UnsupportedLibraryError):
        return KmsLibraryMissing(service)
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConnectionError", "ServiceUnavailable", "ServiceRequestError", "RetryError",
                "DeadlineExceeded", "TransportError"}:
        return KmsUnreachable(f"cannot reach {service.name} while {doing} "
                              f"({type(error).__name__}); check the network and the service's "
                              "address (e.g. VAULT_ADDR), then run the command again")
    if names & {"DefaultCredentialsError", "ClientAuthenticationError", "Unauthorized",
                "Forbidden", "PermissionDenied", "CredentialUnavailableError"}:
        return KmsCredentialsError(f"{service.name} refused {doing} or found no credentials "
                                   f"({type(error).__name__}); check the service's credentials")
    return KmsError(f"{service.name}: {doing} failed ({type(error).__name__}: {error})")
