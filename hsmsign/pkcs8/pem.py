"""PEM blocks of private keys: finding the first one in a file (other blocks skipped, CRLF and
notary's `role:`/`gun:` header lines tolerated) and writing one with checked header lines."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from hsmsign.pkcs8.errors import KeyFormatError

LABEL_ENCRYPTED_PKCS8 = "ENCRYPTED PRIVATE KEY"
LABEL_PKCS8 = "PRIVATE KEY"
LABEL_SEC1 = "EC PRIVATE KEY"
LABEL_PKCS1 = "RSA PRIVATE KEY"
PRIVATE_KEY_LABELS = (LABEL_ENCRYPTED_PKCS8, LABEL_PKCS8, LABEL_SEC1, LABEL_PKCS1)


@dataclass(frozen=True)
class PemBlock:
    """One private-key PEM block."""

    label: str  # "ENCRYPTED PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"
    headers: dict[str, str]  # "Name: value" header lines, in order, names as written
    der: bytes  # base64-decoded body

    @property
    def encrypted(self) -> bool:
        if self.label == LABEL_ENCRYPTED_PKCS8:
            return True
        proc_type = self.header("Proc-Type")
        if proc_type is None:
            return False
        return proc_type.replace(" ", "").upper() == "4,ENCRYPTED"

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def __repr__(self) -> str:  # never show key bytes in reprs / logs
        return (
            f"PemBlock(label={self.label!r}, headers={self.headers!r}, "
            f"der=<{len(self.der)} bytes>)"
        )


_BEGIN_RE = re.compile(r"-----BEGIN ([A-Z0-9][A-Z0-9 ]*?)-----")


def read_private_key_pem(data: bytes) -> PemBlock:
    """Return the first private-key PEM block in ``data``.

    Blocks of other types (certificates, public keys) are skipped. CRLF line
    ends, text before and after the block and RFC 1421-style ``Name: value``
    header lines are tolerated. Raises :class:`KeyFormatError` when there is
    no private-key block, when it has no END line, or when its base64 is broken.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    text = bytes(data).decode("latin-1")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")

    pos = 0
    while True:
        begin = _BEGIN_RE.search(text, pos)
        if begin is None:
            raise KeyFormatError("no private key PEM block found")
        label = begin.group(1)
        end_marker = f"-----END {label}-----"
        end = text.find(end_marker, begin.end())
        if label not in PRIVATE_KEY_LABELS:
            # Skip this block (or just its BEGIN line if it has no END).
            pos = end + len(end_marker) if end >= 0 else begin.end()
            continue
        if end < 0:
            raise KeyFormatError(f"truncated PEM: no END line for {label}")
        return _parse_pem_body(label, text[begin.end() : end])


def _parse_pem_body(label: str, body: str) -> PemBlock:
    lines = body.split("\n")
    # The BEGIN line's own line end leaves an empty first element.
    i = 1 if lines and not lines[0].strip() else 0
    headers: dict[str, str] = {}
    while i < len(lines) and ":" in lines[i]:
        name, value = lines[i].split(":", 1)
        name = name.strip()
        if not name:
            raise KeyFormatError(f"malformed header line in {label} PEM block")
        headers[name] = value.strip()
        i += 1
    # The base64 with every line end and any other whitespace removed (one split in C).
    b64 = "".join("\n".join(lines[i:]).split())
    if not b64:
        raise KeyFormatError(f"empty {label} PEM block")
    try:
        der = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise KeyFormatError(f"broken base64 in {label} PEM block") from None
    if not der:
        raise KeyFormatError(f"empty {label} PEM block")
    return PemBlock(label=label, headers=headers, der=der)


def pem_encode(label: str, der: bytes, headers: dict[str, str] | None) -> bytes:
    """PEM with validated ``name: value`` header lines, a blank line, 64-column base64."""
    items = list((headers or {}).items())
    for name, value in items:
        check_header(name, value)
    return pem_encode_raw(label, der, items)


def check_header(name: str, value: str) -> None:
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError("PEM header names and values must be str")
    if (
        not name
        or ":" in name
        or any(c.isspace() for c in name)
        or not name.isascii()
        or not name.isprintable()
    ):
        raise ValueError(f"invalid PEM header name {name!r}")
    if name.lower() in ("proc-type", "dek-info"):
        raise ValueError(f"PEM header {name!r} is reserved for legacy PEM encryption")
    if "\n" in value or "\r" in value or not value.isascii() or not value.isprintable():
        raise ValueError(f"invalid value for PEM header {name!r}")
    if value != value.strip():
        raise ValueError(f"value for PEM header {name!r} has surrounding whitespace")


def pem_encode_raw(label: str, der: bytes, headers: list[tuple[str, str]]) -> bytes:
    """PEM with header lines as given (not validated; callers check them)."""
    out = [f"-----BEGIN {label}-----\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\n")
    if headers:
        out.append("\n")
    b64 = base64.b64encode(der).decode("ascii")
    for i in range(0, len(b64), 64):
        out.append(b64[i : i + 64] + "\n")
    out.append(f"-----END {label}-----\n")
    return "".join(out).encode("ascii")
