"""The one exception type the command line turns into an `error:` line."""


class HsmsignError(Exception):
    """A failure the user can act on.

    The message says what went wrong and what to do; it never contains a secret.
    """


class NotFound(HsmsignError):
    """A key, token or file that was asked for does not exist."""
