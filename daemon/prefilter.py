"""The XDP prefilter's deny list (bpf/lib/prefilter.h): source CIDRs dropped
on the uplinks before the kernel makes an skb.

Entries come from the agent config (`prefilter:`) and from `porin prefilter
add|delete`; those are stored in the kvstore (/porin/prefilter/<cidr>), so
with etcd every node drops them, and on the embedded store they survive
restarts. /32s go to the exact hash, other prefixes to the LPM trie, as
Cilium's prefilter does; each entry names a per-CPU counter, kept while the
entry stays (also across restarts), and the indexes in front of them
(maps/prefilter_slots.py, daemon/prefilter_index.py) are rewritten to match.
The node's own addresses, its pods' gateway, the kvstore's and the node
network's gateways cannot be listed: an admin cannot lock a node out by
mistake.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from porin.daemon.kvstore import EtcdStore, Event, KvStoreError, LocalStore
from porin.daemon.prefilter_index import MAX_COUNTER, PrefixIndex
from porin.errors import PorinError
from porin.maps.pinned import U32Key
from porin.maps.prefilter_counts import PrefilterCountsMap
from porin.maps.prefilter_exact import PrefilterAddr, PrefilterEntry, PrefilterExactMap
from porin.maps.prefilter_l24 import PrefilterL24Map
from porin.maps.prefilter_lpm import PrefilterLpmMap, PrefilterPrefix
from porin.maps.prefilter_slots import (
    SLOT_SHARED,
    SLOT_USED,
    PrefilterL16Map,
    PrefilterSlot,
    PrefilterSlotsMap,
    slot_bits,
    slot_of,
)

log = logging.getLogger("porin.prefilter")

PREFILTER = "/porin/prefilter/"


class PrefilterError(PorinError):
    http_status = 400


def normalize(cidr: Any) -> str:
    """An IPv4 CIDR (a bare address is a /32), as the maps hold it."""
    if not isinstance(cidr, str):
        raise PrefilterError(f"{cidr!r} is not a CIDR")
    try:
        net = ipaddress.IPv4Network(cidr if "/" in cidr else f"{cidr}/32", strict=False)
    except ValueError as e:
        raise PrefilterError(f"{cidr!r} is not an IPv4 CIDR: {e}") from None
    return str(net)


def _cidr_order(cidr: str) -> tuple[bytes, int]:
    """Sort key of a normalized CIDR: by address, then prefix length."""
    addr, _, plen = cidr.partition("/")
    return socket.inet_aton(addr), int(plen)


class Prefilter:
    def __init__(
        self,
        bpffs_root: str,
        config_cidrs: list[str],
        protected: Callable[[], dict[str, str]],
    ) -> None:
        self.outbox: Any = None  # daemon/outbox.py: writes kept while etcd is away
        self.exact = PrefilterExactMap(bpffs_root)
        self.lpm = PrefilterLpmMap(bpffs_root)
        self.slots = PrefilterSlotsMap(bpffs_root)
        self._slots: dict[int, tuple[str, int, int]] | None = None  # see _sync_slots
        self.counts = PrefilterCountsMap(bpffs_root)
        self.index = PrefixIndex(PrefilterL16Map(bpffs_root), PrefilterL24Map(bpffs_root))
        self.bits = slot_bits(self.slots.max_entries)
        self.config = [normalize(c) for c in config_cidrs]
        self.protected = protected  # address -> why it may not be listed
        self.stored: set[str] = set()
        self.store: LocalStore | EtcdStore | None = None
        self._cancel: Callable[[], None] = lambda: None
        self._lock = threading.Lock()

    def start(self, store: LocalStore | EtcdStore) -> None:
        self.store = store
        for c in self.config:
            self._check(c)
        try:
            self.stored = {k[len(PREFILTER) :] for k in store.get_prefix(PREFILTER)}
            self._cancel = store.watch_prefix(PREFILTER, self._on_change)
        except KvStoreError as e:  # what the maps hold stays
            log.warning("prefilter: kvstore unreachable, keeping the programmed list: %s", e)
            self.stored = set(self._programmed())
            self.stored -= set(self.config)
        self.sync()

    def stop(self) -> None:
        """Stop following the kvstore (its watch would keep the process alive)."""
        try:
            self._cancel()
        except Exception:
            pass

    def _on_change(self, ev: Event) -> None:
        cidr = ev.key[len(PREFILTER) :]
        with self._lock:
            if ev.kind == "delete":
                self.stored.discard(cidr)
            else:
                self.stored.add(cidr)
        self.sync()

    def _check(self, cidr: str) -> None:
        net = ipaddress.IPv4Network(cidr)
        for addr, why in self.protected().items():
            if ipaddress.IPv4Address(addr) in net:
                raise PrefilterError(f"{cidr} covers {addr}, {why}: it cannot be prefiltered")

    def sync(self) -> None:
        """Make the maps hold exactly the wanted list (counters of kept entries
        stay): new entries first, each on a zeroed counter, then the indexes,
        then what went is removed, so the datapath never finds an index entry
        without its entry."""
        with self._lock:
            want = set(self.config) | self.stored
            have = self._programmed()
            counters = self._counters(want, have)
            for c in sorted(want - set(have)):
                self.counts.reset(counters[c])
                entry = PrefilterEntry(counter=counters[c])
                if c.endswith("/32"):
                    self.exact.put(PrefilterAddr.of(c.split("/")[0]), entry)
                else:
                    self.lpm.put(PrefilterPrefix.of(c), entry)
            self._sync_slots(counters)
            self.index.sync({c: n for c, n in counters.items() if not c.endswith("/32")})
            for c in set(have) - want:
                if c.endswith("/32"):
                    self.exact.delete(PrefilterAddr.of(c.split("/")[0]))
                else:
                    self.lpm.delete(PrefilterPrefix.of(c))

    def _programmed(self) -> dict[str, int]:
        """What the maps list, each entry with its counter."""
        return {**self.exact.entries(), **self.lpm.entries()}

    def _counters(self, want: set[str], have: dict[str, int]) -> dict[str, int]:
        """A counter for each wanted entry: its own while it stays listed, else
        the lowest one no listed entry holds (never 0: "not listed")."""
        out = {c: have[c] for c in want if have.get(c)}
        taken = set(have.values())
        last = min(self.counts.max_entries, MAX_COUNTER + 1)
        free = (i for i in range(1, last) if i not in taken)
        for c in sorted(want - set(out)):
            n = next(free, None)
            if n is None:
                raise PrefilterError(
                    f"the prefilter holds {len(want)} entries, more than prefilterMapSize allows"
                )
            out[c] = n
        return out

    def _sync_slots(self, counters: dict[str, int]) -> None:
        """The /32 slots for the wanted /32s, only what changed written (a slot
        that keeps its address keeps its counter). The slots as last written
        are kept, read again after a write failed part way."""
        slots: dict[int, tuple[str, int, int]] = {}
        for c in sorted(counters):
            if not c.endswith("/32"):
                continue
            ip = c.split("/")[0]
            idx = slot_of(ip, self.bits)
            if idx in slots:
                held = slots[idx]
                slots[idx] = (held[0], held[1] | SLOT_SHARED, held[2])
            else:
                slots[idx] = (ip, SLOT_USED, counters[c])
        if self._slots is None:
            self._slots = {i: (s.address, s.flags, s.counter) for i, s in self.slots.used().items()}
        current = self._slots
        try:
            for idx, held in slots.items():
                if current.get(idx) != held:
                    self.slots.put(U32Key(idx), PrefilterSlot.of(*held))
                    current[idx] = held
            for idx in set(current) - set(slots):
                self.slots.put(U32Key(idx), PrefilterSlot())
                del current[idx]
        except BaseException:
            self._slots = None
            raise

    def add(self, cidrs: list[Any]) -> list[str]:
        """All valid and allowed, then stored and programmed; or none."""
        if not isinstance(cidrs, list) or not cidrs:
            raise PrefilterError("cidrs: give a non-empty list of CIDRs")
        norm = [normalize(c) for c in cidrs]
        for c in norm:
            self._check(c)
        self._commit({PREFILTER + c: {"cidr": c} for c in norm}, [])
        with self._lock:
            self.stored |= set(norm)
        self.sync()
        return norm

    def delete(self, cidrs: list[Any]) -> list[str]:
        if not isinstance(cidrs, list) or not cidrs:
            raise PrefilterError("cidrs: give a non-empty list of CIDRs")
        norm = [normalize(c) for c in cidrs]
        for c in norm:
            if c in self.config and c not in self.stored:
                raise PrefilterError(
                    f"{c} comes from the agent config (prefilter:); remove it there"
                )
            if c not in self.stored:
                raise PorinError(
                    f"{c} is not on the prefilter list; nothing deleted", http_status=404
                )
        self._commit({}, [PREFILTER + c for c in norm])
        with self._lock:
            self.stored -= set(norm)
        self.sync()
        return norm

    def _commit(self, puts: dict[str, Any], deletes: list[str]) -> None:
        if self.store is None:
            raise PorinError("the prefilter has not started", http_status=503)
        if self.outbox is not None:  # with etcd: kept for later while it is away
            self.outbox.write(puts, deletes)
            return
        try:
            self.store.commit(puts, deletes)
        except KvStoreError as e:
            raise PorinError(
                f"the kvstore is unreachable, nothing changed: {e}", http_status=503
            ) from None

    def list(self) -> list[dict[str, Any]]:
        counters, totals = self._programmed(), self.counts.totals()
        with self._lock:
            want = set(self.config) | self.stored
        out = []
        for c in sorted(want, key=_cidr_order):
            packets, nbytes = totals.get(counters.get(c, 0), (0, 0))
            out.append(
                {
                    "cidr": c,
                    "source": "config" if c in self.config else "api",
                    "packets": packets,
                    "bytes": nbytes,
                }
            )
        return out
