"""The hash chain: where it breaks, it says so (its canonical JSON: test_canonical.py)."""

from __future__ import annotations

import random
import string

import pytest
from securesystemslib.formats import encode_canonical

from hsmsign.hashchain import GENESIS, ChainBroken, check_chain, link

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
