"""The service's refusals, each with the HTTP status it answers with (callers branch on the
type or `status`, never on the text)."""

from __future__ import annotations

from hsmsign.errors import HsmsignError


class ServiceError(HsmsignError):
    """A request the service refuses; the message is the one-line `{"error": ...}` answer."""

    status = 500
    reason = "error"  # the label of the refusal in metrics and the audit log


class Malformed(ServiceError):
    status, reason = 400, "malformed"


class NotAcceptable(ServiceError):
    """The payload is not metadata the key may sign (wrong type, version, expiry)."""

    status, reason = 400, "not_acceptable"


class Unauthenticated(ServiceError):
    """No client of the policy matches the peer."""

    status, reason = 401, "unauthenticated"


class NotGranted(ServiceError):
    status, reason = 403, "not_granted"


class UnknownKey(ServiceError):
    status, reason = 404, "unknown_key"


class TooLarge(ServiceError):
    status, reason = 413, "too_large"


class StoreUnavailable(ServiceError):
    """The store holding the key does not answer (a token pulled out, a KMS unreachable)."""

    status, reason = 503, "store_unavailable"


class PolicyError(HsmsignError):
    """The policy file cannot be used; the message names the file, the client and the field."""


class RemoteError(HsmsignError):
    """The service answered with an error (`status`), or could not be reached (`status` 0)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
