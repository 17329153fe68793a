"""daemon/ctgc.py: a nearly full table is warned of (rate-limited) and swept as often
as allowed, at once when the datapath refuses new flows."""

from __future__ import annotations

import logging
import time

from porinlab import wait_for

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


def test_new_flows_refused_wake_the_gc_before_its_interval(monkeypatch):
    """A full table that drops new flows is swept at once (at most every
    min_interval), not at the adapted interval: the flows that expired since
    the last pass make room (Cilium's GC wakes on the datapath's signal)."""
    monkeypatch.setattr(ctgc, "PRESSURE_POLL", 0.02)
    refused = [0]
    gc = CtGarbageCollector(
        FakeTables(FakeCt(1, 10), FakeCt(0, 10)), interval=300, min_interval=0.1
    )
    gc.refused = lambda: refused[0]
    gc.start()
    try:
        wait_for(lambda: gc.stats.runs == 1, 10, "the first pass")
        refused[0] += 3  # DROP_CT_MAP_FULL counted
        wait_for(lambda: gc.stats.runs == 2, 10, "a pass woken by the refused flows")
        assert gc.stats.pressure_runs == 1
    finally:
        gc.stop()

    # nothing refused: the pass waits for its interval
    gc.stats.interval_seconds = 0.3
    started = time.monotonic()
    gc._stop.clear()
    gc._wait(started, refused[0])
    assert time.monotonic() - started >= 0.3 and gc.stats.pressure_runs == 1
