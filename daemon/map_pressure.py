"""How full each pinned map is: `porin_bpf_map_pressure{map_name}`.

Hash, LRU and LPM maps fill up; arrays are always full by construction and
have no pressure. Entries are counted with batch reads (a few syscalls
per map) and kept for `max_age` seconds, so a burst of scrapes costs one
count. Conntrack and NAT are not read here: the GC walks them anyway and
its last count is used, as Cilium does (their pressure is as fresh as the
last GC pass).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from porin.daemon.map_specs import PINNED_MAPS
from porin.maps import map_types
from porin.maps.conntrack import ConntrackMap
from porin.maps.conntrack_confirmed import ConntrackConfirmedMap
from porin.maps.nat import NatMap
from porin.maps.pinned import MapNotFound, PinnedMap

log = logging.getLogger("porin.metrics")

FILLING_TYPES = {
    map_types.HASH,
    map_types.LRU_HASH,
    map_types.PERCPU_HASH,
    map_types.LRU_PERCPU_HASH,
    map_types.LPM_TRIE,
}


@dataclass(frozen=True)
class MapFill:
    name: str
    entries: int
    capacity: int

    @property
    def pressure(self) -> float:
        return self.entries / self.capacity if self.capacity else 0.0


class MapPressure:
    def __init__(
        self,
        bpffs_root: str,
        counted_by_gc: dict[str, Callable[[], tuple[int, int]]] | None = None,
        max_age: float = 5.0,
    ) -> None:
        self.bpffs_root = bpffs_root
        # map name -> () -> (entries, capacity), for maps another walker counts
        self.counted_by_gc = counted_by_gc or {}
        self.max_age = max_age
        self._maps: dict[str, PinnedMap] = {}
        self._last: list[MapFill] = []
        self._at = float("-inf")
        self._lock = threading.Lock()

    def _open(self, cls: type[PinnedMap]) -> PinnedMap | None:
        m = self._maps.get(cls.NAME)
        if m is None:
            try:
                m = cls(self.bpffs_root, read_only=True)
            except (MapNotFound, OSError, ValueError) as e:
                log.debug("map pressure: %s not readable: %s", cls.NAME, e)
                return None
            self._maps[cls.NAME] = m
        return m

    def sample(self) -> list[MapFill]:
        """The fill of every map that can fill up, at most `max_age` seconds old."""
        with self._lock:
            if time.monotonic() - self._at < self.max_age:
                return self._last
            out = []
            for cls in PINNED_MAPS:
                if cls.TYPE not in FILLING_TYPES:
                    continue
                if cls.NAME in self.counted_by_gc:
                    entries, capacity = self.counted_by_gc[cls.NAME]()
                    out.append(MapFill(cls.NAME, entries, capacity))
                    continue
                m = self._open(cls)
                if m is not None:
                    out.append(MapFill(cls.NAME, m.count(), m.max_entries))
            self._last, self._at = out, time.monotonic()
            return out

    def close(self) -> None:
        with self._lock:
            for m in self._maps.values():
                m.close()
            self._maps.clear()


GC_COUNTED = (ConntrackMap.NAME, ConntrackConfirmedMap.NAME, NatMap.NAME)
