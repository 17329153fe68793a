"""Conntrack garbage collection, off the request path.

A background thread walks ct4_global with batch lookups, deletes entries
whose lifetime has passed with batch deletes, and adapts its interval to
what it finds, as Cilium does: when a pass deletes a large share of the
table the next one comes sooner, when it deletes little the interval grows.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from porin.daemon.controllers import Controller
from porin.maps.conntrack import LIFETIME_OFFSET, ConntrackMap, CtEntry, CtKey, monotonic_seconds
from porin.maps.nat import NAT_DIR_IN, NAT_DIR_OUT, NatEntry, NatKey, NatMap, counterpart
from porin.models import camel_keys

log = logging.getLogger("porin.ctgc")


@dataclass
class GcStats:
    runs: int = 0
    deleted_total: int = 0
    last_deleted: int = 0
    last_alive: int = 0
    last_duration_ms: float = 0.0
    last_run_at: float = 0.0
    interval_seconds: float = 0.0
    max_entries: int = 0

    def to_json(self) -> dict[str, float | int]:
        d = camel_keys(asdict(self))
        d["fillRatio"] = round(self.last_alive / self.max_entries, 4) if self.max_entries else 0.0
        return d


FILL_WARN = 0.9  # a table this full is warned of, and swept as often as allowed
WARN_EVERY = 300.0  # seconds between two warnings of one table


def next_interval(current: float, deleted: int, total: int, lo: float, hi: float) -> float:
    """Cilium's adaptation: many deletions -> sooner, few -> later."""
    if total == 0:
        return min(hi, current * 1.5)
    ratio = deleted / total
    if ratio >= 0.25:
        return max(lo, current * (1.0 - ratio))
    if ratio <= 0.05:
        return min(hi, current * 1.5)
    return current


def expired_keys(keys: bytes, values: bytes, count: int, now: int) -> tuple[bytes, int]:
    """The keys (packed) whose entry's lifetime is before `now`."""
    ks, vs = ctypes.sizeof(CtKey), ctypes.sizeof(CtEntry)
    out = bytearray()
    n = 0
    unpack = struct.Struct("<I").unpack_from
    for i in range(count):
        if unpack(values, i * vs + LIFETIME_OFFSET)[0] < now:
            out += keys[i * ks : (i + 1) * ks]
            n += 1
    return bytes(out), n


class CtGarbageCollector:
    def __init__(
        self,
        ct: ConntrackMap,
        interval: float = 30.0,
        min_interval: float = 5.0,
        max_interval: float = 300.0,
        nat: NatMap | None = None,
    ) -> None:
        self.ct = ct
        self.nat = nat
        self.nat_deleted_total = 0
        self.nat_last_alive = 0
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.stats = GcStats(interval_seconds=interval, max_entries=ct.max_entries)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # the duration of each pass in seconds: the agent's metrics (daemon/metrics.py)
        self.on_pass: Callable[[float], None] = lambda seconds: None
        self.controller = Controller("conntrack-gc")
        self._warned: dict[str, float] = {}  # table -> when its fill was last warned of

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ct-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def trigger(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.controller.run():
                    self.run_once()
            except Exception:
                log.exception("conntrack GC pass failed")
            self._wake.wait(self.stats.interval_seconds)
            self._wake.clear()

    def run_once(self) -> int:
        """One pass: delete expired entries; returns how many were deleted."""
        with self._lock:
            started = time.monotonic()
            now = monotonic_seconds()
            # NAT first: a masqueraded flow's conntrack entry is always created
            # before its NAT entries, so every NAT entry in this snapshot whose
            # flow is alive has its conntrack entry in the dump below
            nat_snapshot = self.nat.dump_raw() if self.nat is not None else None
            keys, values, n = self.ct.dump_raw()
            dead, ndead = expired_keys(keys, values, n, now)
            if ndead:
                dead, ndead = self._still_expired(dead, ndead, now)
            deleted = self.ct.delete_raw(dead, ndead) if ndead else 0
            if nat_snapshot is not None:
                ks = ctypes.sizeof(CtKey)
                gone = {dead[i * ks : (i + 1) * ks] for i in range(ndead)}
                alive = {keys[i * ks : (i + 1) * ks] for i in range(n)} - gone
                self._gc_nat(alive, nat_snapshot, now)
            s = self.stats
            s.runs += 1
            s.last_deleted = deleted
            s.deleted_total += deleted
            s.last_alive = n - deleted
            took = time.monotonic() - started
            self.on_pass(took)
            s.last_duration_ms = round(took * 1000, 1)
            s.last_run_at = time.time()
            s.interval_seconds = round(
                next_interval(s.interval_seconds, deleted, n, self.min_interval, self.max_interval),
                1,
            )
            full = self._check_fill("conntrack", s.last_alive, self.ct.max_entries, "ctMapSize")
            if self.nat is not None:
                full |= self._check_fill(
                    "NAT", self.nat_last_alive, self.nat.max_entries, "natMapSize"
                )
            if full:  # a nearly full table is swept as often as allowed, to recover
                s.interval_seconds = self.min_interval
            if deleted:
                log.info(
                    "conntrack GC: %d of %d entries expired (%.1f ms), next pass in %.0fs",
                    deleted,
                    n,
                    s.last_duration_ms,
                    s.interval_seconds,
                )
            return deleted

    def _check_fill(self, table: str, alive: int, size: int, key: str) -> bool:
        """Whether `table` is FILL_WARN full; warned of at most every WARN_EVERY s."""
        if not size or alive < FILL_WARN * size:
            return False
        now = time.monotonic()
        if now - self._warned.get(table, -WARN_EVERY) >= WARN_EVERY:
            self._warned[table] = now
            log.warning(
                "%s table %.0f%% full (%d of %d entries): new flows will be dropped "
                "(DROP_CT_CREATE_FAILED, DROP_NAT_MAP_FULL) until entries expire; "
                "raise %s if this is the normal load",
                table,
                100 * alive / size,
                alive,
                size,
                key,
            )
        return True

    def _still_expired(self, dead: bytes, ndead: int, now: int) -> tuple[bytes, int]:
        """Keep only keys still expired in a second read: a packet may have refreshed
        an entry (a reused tuple) since the first one."""
        keys, values, n = self.ct.dump_raw()
        again, nagain = expired_keys(keys, values, n, now)
        ks = ctypes.sizeof(CtKey)
        still = {again[i * ks : (i + 1) * ks] for i in range(nagain)}
        kept = [dead[i * ks : (i + 1) * ks] for i in range(ndead)]
        kept = [k for k in kept if k in still]
        return b"".join(kept), len(kept)

    def _ct_alive_now(self, ct_key: bytes, now: int) -> bool:
        e = self.ct.get(CtKey.from_buffer_copy(ct_key))
        return e is not None and e.lifetime >= now

    def _gc_nat(self, ct_alive: set[bytes], snapshot: tuple[bytes, bytes, int], now: int) -> int:
        """Remove NAT entries whose conntrack entry is gone, both directions, once each.

        Candidates come from snapshots; each is checked against the live
        conntrack map right before it goes, so a flow that resumed meanwhile
        keeps its translation."""
        assert self.nat is not None
        keys, vals, n = snapshot
        ks, vs = ctypes.sizeof(NatKey), ctypes.sizeof(NatEntry)
        entries = [
            (NatKey.from_buffer_copy(keys, i * ks), NatEntry.from_buffer_copy(vals, i * vs))
            for i in range(n)
        ]
        outs = {bytes(k) for k, _ in entries if k.dir == NAT_DIR_OUT}
        doomed: dict[bytes, None] = {}  # ordered, without duplicates
        for k, v in entries:
            if k.dir != NAT_DIR_OUT:
                continue
            raw = bytearray(bytes(k))
            raw[13] = 0  # the conntrack key of the pod's flow: same tuple, no flags
            ct_key = bytes(raw)
            if ct_key in ct_alive or self._ct_alive_now(ct_key, now):
                continue
            doomed[bytes(k)] = None
            doomed[bytes(counterpart(k, v))] = None
        for k, v in entries:
            if k.dir != NAT_DIR_IN or bytes(k) in doomed:
                continue
            out = counterpart(k, v)
            if bytes(out) not in outs and self.nat.get(out) is None:
                doomed[bytes(k)] = None  # an IN entry whose OUT entry is gone
        deleted = self.nat.delete_packed(b"".join(doomed), len(doomed))
        self.nat_deleted_total += deleted
        self.nat_last_alive = n - deleted
        if deleted:
            log.info("NAT GC: %d orphaned entries removed", deleted)
        return deleted

    def nat_stats(self) -> dict[str, int | float]:
        if self.nat is None:
            return {}
        return {
            "entries": self.nat_last_alive,
            "maxEntries": self.nat.max_entries,
            "fillRatio": round(self.nat_last_alive / self.nat.max_entries, 4),
            "deletedTotal": self.nat_deleted_total,
        }
