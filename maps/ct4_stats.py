"""The `ct4_stats` counters of the conntrack tables: one `struct ct_stats`
(bpf/lib/conntrack.h).

entries       ct4_confirmed's entries: new flows are refused (DROP_CT_MAP_FULL)
              while it is at its size; the datapath adds each copy it makes,
              the agent's GC sets it to what it counted after each pass
protected     copies made by the datapath (flows confirmed)
protect_full  flows confirmed while ct4_confirmed was full (left without a copy)
restored      entries put back into ct4_global from their copy (after an eviction)
"""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key


class CtStats(ctypes.Structure):
    _fields_ = [
        ("entries", ctypes.c_uint64),
        ("protected", ctypes.c_uint64),
        ("protect_full", ctypes.c_uint64),
        ("restored", ctypes.c_uint64),
    ]


class CtStatsMap(PinnedMap[U32Key, CtStats]):
    NAME = "ct4_stats"
    TYPE = map_types.ARRAY
    SIZE = 1
    KEY = U32Key
    VALUE = CtStats

    def read(self) -> dict[str, int]:
        v = self.get(U32Key(0)) or CtStats()
        return {
            "confirmedEntries": v.entries,
            "protected": v.protected,
            "protectFull": v.protect_full,
            "restored": v.restored,
        }

    def set_entries(self, n: int) -> None:
        """The count the datapath admits new flows by (the other counters stay)."""
        v = self.get(U32Key(0)) or CtStats()
        v.entries = n
        self.put(U32Key(0), v)
