"""hsmsign's canonical JSON is securesystemslib's, byte for byte, or securesystemslib's own
error: on random JSON data (quotes, backslashes, control characters, non-ASCII text, numbers
and strings that look like floats, floats themselves) and on real TUF metadata, against
python-tuf's `Metadata.signed_bytes`."""

from __future__ import annotations

import random
import string
from datetime import datetime, timezone

import pytest
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from hsmsign.canonical import canonical_json, signed_bytes

ALPHABET = string.printable + "é\u2028\x00\x7f\"\\ü€\U0001f600"
LOOKS_NUMERIC = [":1.5", "[2e3", ",-7.", "1.0.31", "v:1E", ":-0.0", "[9", "2030-01-01T00:00:00Z"]


def _value(rng: random.Random, depth: int = 0, *, floats: bool = False):
    r = rng.random()
    if depth > 3 or r < 0.3:
        if rng.random() < 0.2:
            return rng.choice(LOOKS_NUMERIC) + "".join(rng.choice(ALPHABET) for _ in range(2))
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
    if r < 0.45:
        return rng.randint(-10**12, 10**12)
    if r < 0.5:
        return rng.choice([True, False, None])
    if r < 0.55 and floats:
        return rng.choice([1.5, -0.0, 1e16, 2.0, float("inf")])
    if r < 0.75:
        return [_value(rng, depth + 1, floats=floats) for _ in range(rng.randint(0, 3))]
    return {_value(rng, 4): _value(rng, depth + 1, floats=floats)
            for _ in range(rng.randint(0, 3))}


def _outcome(encode, value):
    try:
        return encode(value)
    except Exception as e:  # noqa: BLE001 - the very error is what is compared
        return type(e)


def test_canonical_json_is_securesystemslibs_text_or_its_error():
    rng = random.Random(17)
    raised = 0
    for n in range(8000):
        value = _value(rng, floats=n % 2 == 1)
        expected = _outcome(encode_canonical, value)
        assert _outcome(canonical_json, value) == expected, value
        raised += isinstance(expected, type)
    assert raised > 100  # floats were there, and refused the same way


def _metadata() -> list[Metadata]:
    expires = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    key = SSlibKey("ab" * 32, "ecdsa", "ecdsa-sha2-nistp256",
              {"public": "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"})
    targets = Targets(version=3, expires=expires)
    for path in ("app/v1.0.tar.gz", "ünïcødé/ファイル", 'quote"and\\slash', "tab\there",
                 "v:1.5", "line\nbreak", "\u2028"):
        targets.targets[path] = TargetFile(12345, {"sha256": "cd" * 32, "sha512": "ef" * 64},
                                           path, unrecognized_fields={"custom": {"n": [1, -2]}})
    targets.delegations = Delegations(
        {key.keyid: key},
        roles={"releases": DelegatedRole("releases", [key.keyid], 1, False, ["*"]),
               "team/ü": DelegatedRole("team/ü", [key.keyid], 2, True,
                                       path_hash_prefixes=["ab", "0f"])})
    root = Root(expires=expires, keys={key.keyid: key})
    root.roles["root"].keyids.append(key.keyid)
    snapshot = Snapshot(version=9, expires=expires,
                        meta={"targets.json": MetaFile(3), "releases.json": MetaFile(
                            4, 512, {"sha256": "01" * 32})})
    timestamp = Timestamp(version=10, expires=expires,
                          snapshot_meta=MetaFile(9, 1024, {"sha256": "02" * 32}))
    return [Metadata(s) for s in (root, targets, snapshot, timestamp, Targets())]


def test_signed_bytes_are_python_tufs_for_every_kind_of_metadata():
    for md in _metadata():
        assert signed_bytes(md) == md.signed_bytes


def test_a_float_in_metadata_is_refused_as_python_tuf_refuses_it():
    md = Metadata(Targets(unrecognized_fields={"weight": 0.5}))
    with pytest.raises(Exception) as theirs:
        md.signed_bytes  # noqa: B018 - the property raises
    with pytest.raises(type(theirs.value)) as ours:
        signed_bytes(md)
    assert str(ours.value) == str(theirs.value)
