"""`prefilter4_l24`: the prefix index's /24 blocks (bpf/lib/prefilter.h), 256
entries each, for the /16s where a prefix longer than /16 starts; written by
daemon/prefilter_index.py."""

from __future__ import annotations

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key
from porin.maps.prefilter_slots import IndexValue

BLOCK = 256
BLOCKS = 1024  # 1 MiB: /16s beyond this many with long prefixes ask the trie


class PrefilterL24Map(PinnedMap[U32Key, IndexValue]):
    NAME = "prefilter4_l24"
    TYPE = map_types.ARRAY
    SIZE = BLOCKS * BLOCK
    SIZE_FLAG = "PREFILTER_L24_SIZE"
    KEY = U32Key
    VALUE = IndexValue

    def blocks(self) -> dict[int, tuple[int, ...]]:
        """The blocks that hold anything, each as its 256 values."""
        raw_keys, raw_vals, _ = self.dump_raw()
        keys, vals = memoryview(raw_keys).cast("I"), memoryview(raw_vals).cast("I")
        out: dict[int, list[int]] = {}
        for k, v in zip(keys, vals, strict=True):
            if v:
                out.setdefault(k // BLOCK, [0] * BLOCK)[k % BLOCK] = v
        return {b: tuple(vs) for b, vs in out.items()}

    def write_block(self, block: int, values: tuple[int, ...]) -> None:
        self.put_many([(U32Key(block * BLOCK + i), IndexValue(v)) for i, v in enumerate(values)])
