"""The `monitor_lost` per-CPU counter: events the datapath could not put in
a full monitor ring buffer (bpf/lib/monitor.h)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key

Index = U32Key  # the array index


class Counter(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


class MonitorLostMap(PinnedMap[Index, Counter]):
    NAME = "monitor_lost"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = 1
    KEY = Index
    VALUE = Counter

    def total(self) -> int:
        values = self.get_percpu(Index(0)) or []
        return sum(v.value for v in values)
