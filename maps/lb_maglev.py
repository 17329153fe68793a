"""The `lb4_maglev` map: reverse-NAT id -> Maglev lookup table of backend ids.

The table size is a build flag (LB_MAGLEV_TABLE_SIZE, a prime); this module
takes it from the pinned map's value size, so it always matches the datapath.
"""

from __future__ import annotations

import array
import ctypes
import os

from porin.maps import map_types, syscall
from porin.maps.lb_reverse_nat import RevNatId
from porin.maps.pinned import DEFAULT_BPFFS_ROOT, open_pinned


class MaglevMap:
    NAME = "lb4_maglev"
    TYPE = map_types.HASH
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = 1024  # Maglev tables, one per frontend that uses Maglev
    SIZE_FLAG = "LB_MAGLEV_MAP_SIZE"

    def __init__(self, bpffs_root: str = DEFAULT_BPFFS_ROOT, read_only: bool = False) -> None:
        self.path = os.path.join(bpffs_root, self.NAME)
        self.fd = open_pinned(self.path, bpffs_root, read_only)
        info = syscall.map_info(self.fd)
        if info.key_size != 2 or info.value_size % 4:
            raise ValueError(f"{self.path}: unexpected key/value size")
        self.table_size = info.value_size // 4

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MaglevMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, rev_nat: int, table: list[int]) -> None:
        if len(table) != self.table_size:
            raise ValueError(
                f"Maglev table has {len(table)} slots, the map wants {self.table_size}"
            )
        raw = array.array("I", table).tobytes()
        val = ctypes.create_string_buffer(raw, len(raw))
        key = ctypes.create_string_buffer(bytes(RevNatId(rev_nat)), 2)
        syscall.update(self.fd, key, val)

    def get(self, rev_nat: int) -> list[int] | None:
        key = ctypes.create_string_buffer(bytes(RevNatId(rev_nat)), 2)
        val = ctypes.create_string_buffer(self.table_size * 4)
        if not syscall.lookup(self.fd, key, val):
            return None
        return array.array("I", val.raw).tolist()

    def ids(self) -> list[int]:
        """The reverse-NAT ids that have a table."""
        out: list[int] = []
        key = ctypes.create_string_buffer(2)
        nxt = ctypes.create_string_buffer(2)
        prev = None
        while syscall.next_key(self.fd, prev, nxt):
            out.append(RevNatId.from_buffer_copy(nxt.raw).id)
            ctypes.memmove(key, nxt, 2)
            prev = key
        return out

    def delete(self, rev_nat: int) -> bool:
        key = ctypes.create_string_buffer(bytes(RevNatId(rev_nat)), 2)
        return syscall.delete(self.fd, key)
