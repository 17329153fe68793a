"""`prefilter4_exact`: single source addresses XDP drops (bpf/lib/prefilter.h),
each with what it dropped."""

from __future__ import annotations

import ctypes
import socket

from porin.maps import map_types
from porin.maps.pinned import PinnedMap


class PrefilterAddr(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint8 * 4)]

    @classmethod
    def of(cls, ip: str) -> PrefilterAddr:
        return cls(ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(ip)))

    @property
    def address(self) -> str:
        return socket.inet_ntoa(bytes(self.ip))


class PrefilterCounters(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class PrefilterExactMap(PinnedMap[PrefilterAddr, PrefilterCounters]):
    NAME = "prefilter4_exact"
    TYPE = map_types.HASH
    SIZE = "prefilter_map_size"
    SIZE_FLAG = "PREFILTER_MAP_SIZE"
    KEY = PrefilterAddr
    VALUE = PrefilterCounters

    def entries(self) -> dict[str, PrefilterCounters]:
        return {f"{k.address}/32": v for k, v in self.items()}
