"""daemon/ctgc.py: a nearly full table is warned of (rate-limited) and swept as often as allowed."""

from __future__ import annotations

import logging

from porin.daemon import ctgc
from porin.daemon.ctgc import CtGarbageCollector
from porin.maps.conntrack import CtEntry, CtKey


class FakeCt:
    """`alive` entries that never expire, in a table of `max_entries`."""

    def __init__(self, alive: int, max_entries: int) -> None:
        self.alive, self.max_entries = alive, max_entries

    def dump_raw(self) -> tuple[bytes, bytes, int]:
        keys = b"".join(bytes(CtKey(sport=i)) for i in range(self.alive))
        e = CtEntry(lifetime=0xFFFFFFFF)
        return keys, bytes(e) * self.alive, self.alive

    def delete_raw(self, keys: bytes, count: int) -> int:
        return 0

    delete_packed = delete_raw

    def put_many(self, pairs: list) -> None:
        assert not pairs  # nothing here wants a copy


class FakeTables:
    """The two conntrack tables (maps/conntrack_tables.py): flows and copies."""

    def __init__(self, flows: FakeCt, copies: FakeCt) -> None:
        self.flows, self.copies = flows, copies
        self.max_entries = flows.max_entries


def test_a_table_90_percent_full_is_warned_of_once_per_period(caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(ctgc.time, "monotonic", lambda: clock[0])
    gc = CtGarbageCollector(FakeTables(FakeCt(9, 10), FakeCt(0, 10)), interval=30, min_interval=5)
    with caplog.at_level(logging.WARNING, logger="porin.ctgc"):
        gc.run_once()
        gc.run_once()
        clock[0] += ctgc.WARN_EVERY
        gc.run_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "conntrack table 90% full (9 of 10 entries)" in warnings[0]
    assert "unconfirmed flows are evicted" in warnings[0] and "ctMapSize" in warnings[0]
    assert gc.stats.interval_seconds == 5  # swept as often as allowed


def test_below_90_percent_nothing_is_said(caplog):
    gc = CtGarbageCollector(FakeTables(FakeCt(8, 10), FakeCt(8, 10)), interval=30, min_interval=5)
    with caplog.at_level(logging.WARNING):
        gc.run_once()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert gc.stats.interval_seconds > 5


def test_a_nearly_full_confirmed_table_says_new_flows_will_be_refused(caplog):
    gc = CtGarbageCollector(FakeTables(FakeCt(0, 100), FakeCt(19, 20)), interval=30, min_interval=5)
    with caplog.at_level(logging.WARNING, logger="porin.ctgc"):
        gc.run_once()
    (w,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "confirmed conntrack table 95% full (19 of 20 entries)" in w
    assert "DROP_CT_MAP_FULL" in w and "ctConfirmedMapSize" in w
