"""The `monitor_lost` per-CPU counter: events the datapath could not put in
a full monitor ring buffer (bpf/lib/monitor.h)."""

from __future__ import annotations

import ctypes

from porin.maps.pinned import PinnedMap


class Index(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32)]


class Counter(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


class MonitorLostMap(PinnedMap[Index, Counter]):
    NAME = "monitor_lost"
    KEY = Index
    VALUE = Counter

    def total(self) -> int:
        values = self.get_percpu(Index(0)) or []
        return sum(v.value for v in values)
