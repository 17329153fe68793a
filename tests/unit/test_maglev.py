"""Maglev properties on real tables (the ones the agent pushes to lb4_maglev)."""

from __future__ import annotations

import collections
import random

import pytest

from porin.daemon.maglev import DEFAULT_TABLE_SIZE, build_table, quotas

M = DEFAULT_TABLE_SIZE


def backends(n: int) -> dict[str, int]:
    return {f"10.244.{i // 250}.{i % 250 + 2}:8080": 1 for i in range(n)}


def flows(n: int = 20000) -> list[int]:
    rng = random.Random(7)
    return [rng.randrange(2**32) for _ in range(n)]


def lookup(table: list, flow_hash: int):
    return table[flow_hash % M]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 50])
def test_shares_within_one_percent_of_weight(n):
    table = build_table(backends(n), M)
    counts = collections.Counter(table)
    assert None not in counts
    for b in backends(n):
        assert abs(counts[b] / M - 1 / n) < 0.01
        assert abs(counts[b] - M / n) <= 1  # in fact within one slot


def test_weighted_shares():
    w = {"a:1": 1, "b:1": 3, "c:1": 6, "d:1": 0}
    counts = collections.Counter(build_table(w, M))
    assert "d:1" not in counts
    for b, weight in w.items():
        assert abs(counts[b] / M - weight / 10) < 0.01


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_removing_a_backend_moves_only_its_flows(n):
    bs = backends(n)
    before = build_table(bs, M)
    gone = sorted(bs)[n // 2]
    after = build_table({b: w for b, w in bs.items() if b != gone}, M, previous=before)
    for f in flows():
        if lookup(before, f) != gone:
            assert lookup(after, f) == lookup(before, f)
        else:
            assert lookup(after, f) != gone
    # and the table is as balanced as a fresh one
    counts = collections.Counter(after)
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 30])
def test_adding_a_backend_moves_about_one_in_n_plus_one(n):
    bs = backends(n + 1)
    new = sorted(bs)[-1]
    before = build_table({b: w for b, w in bs.items() if b != new}, M)
    after = build_table(bs, M, previous=before)
    fl = flows()
    moved = [f for f in fl if lookup(after, f) != lookup(before, f)]
    assert len(moved) / len(fl) <= 1 / (n + 1) + 0.01
    assert all(lookup(after, f) == new for f in moved)  # flows only move to the newcomer
    counts = collections.Counter(after)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_fresh_table_is_deterministic_and_order_independent():
    bs = backends(5)
    shuffled = dict(reversed(list(bs.items())))
    assert build_table(bs, M) == build_table(shuffled, M)


def test_no_backends_and_bad_size():
    assert build_table({}, M) == [None] * M
    with pytest.raises(ValueError, match="not prime"):
        build_table({"a:1": 1}, 16384)


def test_quotas_sum_to_table_size():
    for w in ({"a": 1}, {"a": 1, "b": 2, "c": 3}, {f"x{i}": i % 4 + 1 for i in range(97)}):
        assert sum(quotas(w, M).values()) == M
