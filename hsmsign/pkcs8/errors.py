"""What goes wrong reading or writing a key: one exception family, never showing key bytes."""


class KeyFormatError(ValueError):
    """The data is corrupt, truncated, not a private key, or an unsupported key."""


class PassphraseRequired(KeyFormatError):
    """The key is encrypted and no passphrase was given."""


class WrongPassphrase(KeyFormatError):
    """The key could not be decrypted with the given passphrase."""
