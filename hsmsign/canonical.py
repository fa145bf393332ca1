"""Canonical JSON (securesystemslib's, as TUF signs it), byte for byte, through json's C encoder.

securesystemslib's `encode_canonical` is pure Python: ~24 us for a small targets role, most of
a signature's cost on a token. For the data TUF metadata holds, `json.dumps` with sorted keys,
no spaces and no ASCII escaping writes the very same text, except where it escapes a character
(a backslash appears in its output) or writes a float (which canonical JSON refuses): only then
is securesystemslib's encoder (or python-tuf's serializer) asked, and its text or its error is
the answer.
"""

from __future__ import annotations

import json
import re

from securesystemslib.formats import encode_canonical

_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False).encode
# In this compact form a number inside an object or array follows ":", "," or "["; a float has
# "." or an exponent. A string holding such text ("v:1.5") only sends the value the slow way.
_MAYBE_FLOAT = re.compile(r"[:,\[]-?[0-9]+[.eE]")


def _fast(value) -> str | None:
    """The canonical JSON of `value` (JSON data with str keys), or None where only
    securesystemslib's encoder can tell (an escape, a float, something not JSON)."""
    try:
        text = _ENCODE(value)
    except (TypeError, ValueError):
        return None
    if text[0] in "-0123456789" or "\\" in text or _MAYBE_FLOAT.search(text):
        return None  # a number on its own (never TUF metadata), an escape, maybe a float
    return text


def canonical_json(value) -> str:
    """securesystemslib's canonical JSON of `value` (JSON data with str keys), or its error."""
    text = _fast(value)
    return encode_canonical(value) if text is None else text


def signed_bytes(md) -> bytes:
    """python-tuf's `md.signed_bytes`: the bytes the signatures of `md` are over, or its error."""
    text = _fast(md.signed.to_dict())
    return md.signed_bytes if text is None else text.encode("utf-8")
