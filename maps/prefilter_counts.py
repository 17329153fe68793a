"""`prefilter4_counts`: per-CPU {packets, bytes} dropped, by the counter a
prefilter entry names (bpf/lib/prefilter.h). Counter 0 is never used: the
datapath reads it as "not listed"."""

from __future__ import annotations

from porin.maps import map_types
from porin.maps.metrics import MetricsValue as PrefilterCount
from porin.maps.metrics import sum_percpu
from porin.maps.pinned import PinnedMap, U32Key


class PrefilterCountsMap(PinnedMap[U32Key, PrefilterCount]):
    NAME = "prefilter4_counts"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = "prefilter_counters"
    SIZE_FLAG = "PREFILTER_COUNTS_SIZE"
    KEY = U32Key
    VALUE = PrefilterCount

    def merge_percpu(self, values: list[PrefilterCount]) -> PrefilterCount:
        return sum_percpu(values)

    def totals(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) of every counter that has counted, summed over the
        CPUs, from one batch read parsed in place (32,769 counters on each CPU)."""
        raw_keys, raw_vals, n = self.dump_raw()
        keys, words = memoryview(raw_keys).cast("I"), memoryview(raw_vals).cast("Q")
        per_key = 2 * self._ncpu  # {packets, bytes} on each CPU, 16 bytes apart
        out = {}
        for i in range(n):
            row = words[i * per_key : (i + 1) * per_key]
            packets = sum(row[0::2])
            if packets:
                out[keys[i]] = (packets, sum(row[1::2]))
        return out

    def reset(self, counter: int) -> None:
        """Zero `counter` on every CPU (before an entry takes it)."""
        self.put(U32Key(counter), PrefilterCount())
