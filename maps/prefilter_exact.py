"""`prefilter4_exact`: single source addresses XDP drops (bpf/lib/prefilter.h),
each naming its counter in `prefilter4_counts`."""

from __future__ import annotations

import ctypes
import socket

from porin.maps import map_types
from porin.maps.pinned import PinnedMap

REBUILT_FROM = "the prefilter list (its drop counters restart at 0)"


class PrefilterAddr(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint8 * 4)]

    @classmethod
    def of(cls, ip: str) -> PrefilterAddr:
        return cls(ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(ip)))

    @property
    def address(self) -> str:
        return socket.inet_ntoa(bytes(self.ip))


class PrefilterEntry(ctypes.Structure):
    """struct prefilter_entry: the entry's counter (an index in prefilter4_counts)."""

    _fields_ = [("counter", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class PrefilterExactMap(PinnedMap[PrefilterAddr, PrefilterEntry]):
    NAME = "prefilter4_exact"
    TYPE = map_types.HASH
    SIZE = "prefilter_map_size"
    SIZE_FLAG = "PREFILTER_MAP_SIZE"
    KEY = PrefilterAddr
    VALUE = PrefilterEntry
    REBUILT_FROM = REBUILT_FROM

    def entries(self) -> dict[str, int]:
        """Each listed /32 with its counter."""
        return {f"{k.address}/32": v.counter for k, v in self.dump()}
