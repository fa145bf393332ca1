"""The hash chain's canonical JSON is securesystemslib's, byte for byte, on any JSON data
without floats (quotes, backslashes, control characters, non-ASCII text included)."""

from __future__ import annotations

import random
import string

import pytest
from securesystemslib.formats import encode_canonical

from hsmsign.hashchain import GENESIS, ChainBroken, canonical_json, check_chain, link

ALPHABET = string.printable + "é\u2028\x00\x7f\"\\ü€\U0001f600"


def _value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.3:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
    if r < 0.45:
        return rng.randint(-10**12, 10**12)
    if r < 0.5:
        return rng.choice([True, False, None])
    if r < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_value(rng, 4): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_canonical_json_is_securesystemslibs():
    rng = random.Random(17)
    for _ in range(5000):
        value = _value(rng)
        assert canonical_json(value) == encode_canonical(value), value


def test_a_chain_breaks_where_it_was_edited():
    entries, prev = [], GENESIS
    for i in range(1, 4):
        entries.append(link({"n": i, "text": 'a "quoted"\\ line'}, i, prev))
        prev = entries[-1]["hash"]
    assert check_chain(entries) == prev
    entries[1]["n"] = 7
    with pytest.raises(ChainBroken) as broken:
        check_chain(entries)
    assert broken.value.index == 2 and broken.value.edited
