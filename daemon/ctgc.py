"""Conntrack garbage collection, off the request path.

A background thread walks ct4_global with batch lookups, deletes entries
whose lifetime has passed with batch deletes, and adapts its interval to
what it finds, as Cilium does: when a pass deletes a large share of the
table the next one comes sooner, when it deletes little the interval grows.
The same pass keeps ct4_confirmed, the copies of confirmed flows that
nothing evicts (bpf/lib/conntrack.h), in step: the copy of an expired flow
goes with it, so this GC is what makes room there, and after each pass the
datapath's count of the copies (ct4_stats, which refuses new flows while it
is at ctConfirmedMapSize) is set to what the pass found.
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
from porin.maps.conntrack import (
    CT_F_PROTECTED,
    CT_F_UNPROTECTED,
    LIFETIME_OFFSET,
    ConntrackMap,
    CtEntry,
    CtKey,
    monotonic_seconds,
)
from porin.maps.conntrack_tables import Conntrack
from porin.maps.ct4_stats import CtStatsMap
from porin.maps.nat import NAT_DIR_IN, NAT_DIR_OUT, NatEntry, NatKey, NatMap, counterpart
from porin.models import camel_keys

log = logging.getLogger("porin.ctgc")

FLAGS_OFFSET = CtEntry.flags.offset
PROTO_OFFSET = CtKey.proto.offset


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
    last_copies: int = 0  # confirmed flows' copies (ct4_confirmed) after the pass
    pressure_runs: int = 0  # passes run early because new flows were refused

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


STATE_OFFSET = CtEntry.state.offset
CONFIRMED_STATE = {6: 3}  # TCP: ESTABLISHED; anything else: REPLIED (7)


def _wants_copy(key: bytes, value: bytes) -> bool:
    """A ct4_global entry (raw) of a confirmed flow (bpf/lib/conntrack.h:
    ct_is_confirmed), or one the datapath marked protected or unprotected
    (confirmed while there was no room)."""
    if value[FLAGS_OFFSET] & (CT_F_PROTECTED | CT_F_UNPROTECTED):
        return True
    return value[STATE_OFFSET] == CONFIRMED_STATE.get(key[PROTO_OFFSET], 7)


def _as_copy(value: bytes) -> CtEntry:
    e = CtEntry.from_buffer_copy(value)
    e.flags = (e.flags | CT_F_PROTECTED) & ~CT_F_UNPROTECTED
    return e


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


PRESSURE_POLL = 1.0  # seconds between looks at the refused-flow counters


class CtGarbageCollector:
    def __init__(
        self,
        ct: Conntrack,
        interval: float = 30.0,
        min_interval: float = 5.0,
        max_interval: float = 300.0,
        nat: NatMap | None = None,
        stats: CtStatsMap | None = None,
    ) -> None:
        self.ct = ct
        self.ct_stats = stats
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
        # new flows the datapath refused for want of room so far (DROP_CT_MAP_FULL,
        # DROP_NAT_MAP_FULL): when it rises, a pass runs as soon as min_interval
        # allows rather than at the adapted interval, as Cilium's GC wakes on the
        # datapath's "table full" signal; the agent reads the metrics map
        self.refused: Callable[[], int] = lambda: 0

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
            started = time.monotonic()
            refused = self._refused()
            try:
                with self.controller.run():
                    self.run_once()
            except Exception:
                log.exception("conntrack GC pass failed")
            self._wait(started, refused)

    def _wait(self, started: float, refused: int) -> None:
        """Until the next pass: the adapted interval, a trigger(), or new
        flows refused since the last pass (looked at every PRESSURE_POLL s)."""
        due = started + self.stats.interval_seconds
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= due:
                return
            if self._wake.wait(min(due - now, PRESSURE_POLL)):
                self._wake.clear()
                return
            if time.monotonic() - started >= self.min_interval and self._refused() > refused:
                self.stats.pressure_runs += 1
                return

    def _refused(self) -> int:
        try:
            return self.refused()
        except OSError:  # the metrics map went (uninstall): no pressure to see
            return 0

    def run_once(self) -> int:
        """One pass: delete expired entries; returns how many were deleted."""
        with self._lock:
            started = time.monotonic()
            now = monotonic_seconds()
            # NAT first: a masqueraded flow's conntrack entry is always created
            # before its NAT entries, so every NAT entry in this snapshot whose
            # flow is alive has its conntrack entry in the dump below
            nat_snapshot = self.nat.dump_raw() if self.nat is not None else None
            flows, gone, n = self._sweep_flows(now)
            deleted = len(gone)
            copies = self._sweep_copies(flows, gone, now)
            if self.ct_stats is not None:
                self.ct_stats.set_entries(len(copies))  # room for new flows again
            if nat_snapshot is not None:
                self._gc_nat(set(flows) | set(copies), nat_snapshot, now)
            s = self.stats
            s.runs += 1
            s.last_deleted = deleted
            s.deleted_total += deleted
            s.last_alive = len(flows)
            s.last_copies = len(copies)
            took = time.monotonic() - started
            self.on_pass(took)
            s.last_duration_ms = round(took * 1000, 1)
            s.last_run_at = time.time()
            s.interval_seconds = round(
                next_interval(s.interval_seconds, deleted, n, self.min_interval, self.max_interval),
                1,
            )
            full = self._check_fill(
                "conntrack", s.last_alive, self.ct.max_entries, "ctMapSize",
                "idle unconfirmed flows are evicted",
            )  # fmt: skip
            full |= self._check_fill(
                "confirmed conntrack", s.last_copies, self.ct.copies.max_entries,
                "ctConfirmedMapSize", "new flows will be dropped (DROP_CT_MAP_FULL)",
            )  # fmt: skip
            if self.nat is not None:
                full |= self._check_fill(
                    "NAT", self.nat_last_alive, self.nat.max_entries, "natMapSize",
                    "new masqueraded flows will be dropped (DROP_NAT_MAP_FULL)",
                )  # fmt: skip
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

    def _sweep_flows(self, now: int) -> tuple[dict[bytes, bytes], set[bytes], int]:
        """ct4_global's expired entries deleted: (the entries left, the keys
        deleted, how many there were)."""
        table = self.ct.flows
        keys, values, n = table.dump_raw()
        dead, ndead = expired_keys(keys, values, n, now)
        if ndead:
            dead, ndead = self._still_expired(table, dead, ndead, now)
        if ndead:
            table.delete_raw(dead, ndead)
        ks, vs = ctypes.sizeof(CtKey), ctypes.sizeof(CtEntry)
        gone = {dead[i * ks : (i + 1) * ks] for i in range(ndead)}
        flows = {keys[i * ks : (i + 1) * ks]: values[i * vs : (i + 1) * vs] for i in range(n)}
        for k in gone:
            del flows[k]
        return flows, gone, n

    def _sweep_copies(
        self, flows: dict[bytes, bytes], gone: set[bytes], now: int
    ) -> dict[bytes, bytes]:
        """ct4_confirmed after the pass: the copies of flows that expired go;
        those of live flows are brought up to date (so a copy put back after
        an eviction is recent); a copy whose entry the LRU evicted stays until
        it would have expired (at most one pass late); a protected entry that
        lost its copy (a race with a deletion) gets it again. Returns them."""
        table = self.ct.copies
        keys, values, n = table.dump_raw()
        ks, vs = ctypes.sizeof(CtKey), ctypes.sizeof(CtEntry)
        copies = {keys[i * ks : (i + 1) * ks]: values[i * vs : (i + 1) * vs] for i in range(n)}
        life = struct.Struct("<I").unpack_from
        doomed, refresh = [], []
        for k, v in copies.items():
            live = flows.get(k)
            if k in gone or (
                live is None and life(v, LIFETIME_OFFSET)[0] + self.max_interval < now
            ):
                doomed.append(k)
            elif live is not None and life(live, LIFETIME_OFFSET)[0] > life(v, LIFETIME_OFFSET)[0]:
                refresh.append(k)
        room = table.max_entries - (n - len(doomed))
        # a confirmed flow without a copy: one only the uplinks' programs
        # see (they make none), or one whose copy went in a race
        healed = [k for k, v in flows.items() if k not in copies and _wants_copy(k, v)]
        healed = healed[: max(room, 0)]
        if doomed:
            table.delete_packed(b"".join(doomed), len(doomed))
        for k in doomed:
            del copies[k]
        writes = refresh + healed
        table.put_many([(CtKey.from_buffer_copy(k), _as_copy(flows[k])) for k in writes])
        copies.update({k: flows[k] for k in writes})
        return copies

    def _check_fill(self, table: str, alive: int, size: int, key: str, then: str) -> bool:
        """Whether `table` is FILL_WARN full; warned of at most every WARN_EVERY s."""
        if not size or alive < FILL_WARN * size:
            return False
        now = time.monotonic()
        if now - self._warned.get(table, -WARN_EVERY) >= WARN_EVERY:
            self._warned[table] = now
            log.warning(
                "%s table %.0f%% full (%d of %d entries): %s until entries expire; "
                "raise %s if this is the normal load",
                table,
                100 * alive / size,
                alive,
                size,
                then,
                key,
            )
        return True

    def _still_expired(
        self, table: ConntrackMap, dead: bytes, ndead: int, now: int
    ) -> tuple[bytes, int]:
        """Keep only keys still expired in a second read: a packet may have refreshed
        an entry (a reused tuple) since the first one."""
        keys, values, n = table.dump_raw()
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

    def confirmed_stats(self) -> dict[str, int]:
        """ct4_confirmed: its copies and size, and the datapath's counters."""
        out = {"entries": self.stats.last_copies, "maxEntries": self.ct.copies.max_entries}
        if self.ct_stats is not None:
            c = self.ct_stats.read()
            out |= {k: c[k] for k in ("protected", "protectFull", "restored")}
        return out

    def nat_stats(self) -> dict[str, int | float]:
        if self.nat is None:
            return {}
        return {
            "entries": self.nat_last_alive,
            "maxEntries": self.nat.max_entries,
            "fillRatio": round(self.nat_last_alive / self.nat.max_entries, 4),
            "deletedTotal": self.nat_deleted_total,
        }
