"""daemon/prefilter_index.py plan: what the /16 and /24 index says for a list
of prefixes, the longest covering prefix winning as in the trie."""

from __future__ import annotations

import pytest

from porin.daemon.prefilter_index import IDX_PREFIX, IDX_TRIE, plan


def h16(a: int, b: int) -> int:
    return a << 8 | b


def test_a_short_prefix_covers_whole_16s():
    got = plan({"10.0.0.0/8": 1})
    assert len(got) == 256
    assert got[h16(10, 0)] == got[h16(10, 255)] == IDX_PREFIX | 1
    assert h16(11, 0) not in got


def test_a_longer_prefix_inside_makes_a_block_where_the_longest_wins():
    got = plan({"10.0.0.0/8": 1, "10.1.16.0/20": 2, "10.1.20.0/24": 3})
    block = got[h16(10, 1)]
    assert isinstance(block, tuple) and len(block) == 256
    assert block[15] == IDX_PREFIX | 1  # 10.1.15.0: only the /8
    assert block[16] == block[31] == IDX_PREFIX | 2  # the /20
    assert block[20] == IDX_PREFIX | 3  # the /24 inside the /20
    assert block[32] == IDX_PREFIX | 1
    assert got[h16(10, 2)] == IDX_PREFIX | 1  # other /16s stay whole


def test_a_prefix_longer_than_24_sends_its_24_to_the_trie():
    got = plan({"192.0.2.128/25": 4})
    block = got[h16(192, 0)]
    assert isinstance(block, tuple)
    assert block[2] == IDX_TRIE
    assert block[1] == block[3] == 0  # nothing covers these: pass


def test_a_shorter_prefix_listed_after_a_longer_one_does_not_hide_it():
    a = plan({"172.16.0.0/12": 5, "172.16.0.0/16": 6})
    b = plan({"172.16.0.0/16": 6, "172.16.0.0/12": 5})
    assert a == b
    assert a[h16(172, 16)] == IDX_PREFIX | 6
    assert a[h16(172, 17)] == IDX_PREFIX | 5


def test_counters_out_of_range_are_refused():
    with pytest.raises(ValueError, match="counter"):
        plan({"10.0.0.0/8": 0})
