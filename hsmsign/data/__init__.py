"""Data shipped with hsmsign (Yubico attestation roots)."""
