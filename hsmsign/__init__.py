"""hsmsign: keep TUF signing keys on the safest store available and sign with them there."""

__version__ = "0.1.0"
