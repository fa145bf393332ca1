"""hsmsign's exceptions: one base the command line turns into an `error:` line, and subclasses
for what callers branch on (as yubikit's `InvalidPinError.attempts_remaining` and
`tuf.api.exceptions` do). Code decides by the type and its fields, never by the message text.

Every message says what went wrong and what to do; none contains a secret.
"""

from __future__ import annotations


class HsmsignError(Exception):
    """A failure the user can act on.

    The message says what went wrong and what to do; it never contains a secret.
    """


class NotFound(HsmsignError):
    """A key, token or file that was asked for does not exist."""


class KeyNotFound(NotFound):
    """No store here holds the key asked for (or the store asked has no such key)."""


# -- secrets ------------------------------------------------------------------------------


class SecretUnavailable(HsmsignError):
    """No environment variable and no terminal to ask on."""


class WrongPassphrase(HsmsignError):
    """A passphrase did not open a key or an archive, and hsmsign will not ask again."""


class WrongPin(HsmsignError):
    """A token or YubiKey refused the PIN (or PUK) given.

    `attempts_remaining` is how many tries the device says are left, or None when it does not
    say (a PKCS#11 token reports only "few" through its flags; SoftHSM reports nothing).
    """

    def __init__(self, message: str, *, attempts_remaining: int | None = None):
        super().__init__(message)
        self.attempts_remaining = attempts_remaining


class PinPolicyError(HsmsignError):
    """hsmsign refused to spend a PIN try (one left, or the PIN is locked)."""


class PinLocked(PinPolicyError):
    """The PIN is locked (blocked): no try is left until it is unblocked or reset."""


# -- devices ------------------------------------------------------------------------------


class TokenError(HsmsignError):
    """The PKCS#11 module or token cannot be used as configured."""


class TokenAbsent(TokenError):
    """No token that matches the configuration is present (or no module is configured)."""


class SeveralTokens(TokenError):
    """Several tokens match the configuration and hsmsign will not guess which one is meant."""
