"""The `flow_lost` per-CPU counters: flow events the datapath did not write
(bpf/lib/flowlog.h), [0] the ring buffer was full, [1] over the budget."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key

RING_FULL, RATE_LIMITED = 0, 1


class Counter(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


class FlowLostMap(PinnedMap[U32Key, Counter]):
    NAME = "flow_lost"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = 2
    KEY = U32Key
    VALUE = Counter

    def totals(self) -> dict[str, int]:
        """{"ringFull": n, "rateLimited": n}, summed over CPUs."""
        out = {"ringFull": 0, "rateLimited": 0}
        for k, values in self.items_percpu_batch():
            name = {RING_FULL: "ringFull", RATE_LIMITED: "rateLimited"}.get(k.index)
            if name:
                out[name] = sum(v.value for v in values)
        return out
