"""`prefilter4_counts`: per-CPU {packets, bytes} dropped, by the counter a
prefilter entry names (bpf/lib/prefilter.h). Counter 0 is never used: the
datapath reads it as "not listed"."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key


class PrefilterCount(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class PrefilterCountsMap(PinnedMap[U32Key, PrefilterCount]):
    NAME = "prefilter4_counts"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = "prefilter_counters"
    SIZE_FLAG = "PREFILTER_COUNTS_SIZE"
    KEY = U32Key
    VALUE = PrefilterCount

    def merge_percpu(self, values: list[PrefilterCount]) -> PrefilterCount:
        return PrefilterCount(
            packets=sum(v.packets for v in values), bytes=sum(v.bytes for v in values)
        )

    def totals(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) of every counter that has counted, in one batch read."""
        out = {}
        for k, values in self.items_percpu_batch():
            v = self.merge_percpu(values)
            if v.packets:
                out[k.index] = (v.packets, v.bytes)
        return out

    def reset(self, counter: int) -> None:
        """Zero `counter` on every CPU (before an entry takes it)."""
        self.put(U32Key(counter), PrefilterCount())
