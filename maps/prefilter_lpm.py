"""`prefilter4_lpm`: source prefixes XDP drops (bpf/lib/prefilter.h), each
with what it dropped."""

from __future__ import annotations

import ctypes
import socket

from porin.maps import map_types
from porin.maps.pinned import PinnedMap
from porin.maps.prefilter_exact import PrefilterCounters


class PrefilterPrefix(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip", ctypes.c_uint8 * 4)]

    @classmethod
    def of(cls, cidr: str) -> PrefilterPrefix:
        addr, _, plen = cidr.partition("/")
        return cls(prefixlen=int(plen), ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(addr)))

    @property
    def prefix(self) -> str:
        return f"{socket.inet_ntoa(bytes(self.ip))}/{self.prefixlen}"


class PrefilterLpmMap(PinnedMap[PrefilterPrefix, PrefilterCounters]):
    NAME = "prefilter4_lpm"
    TYPE = map_types.LPM_TRIE
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = "prefilter_map_size"
    SIZE_FLAG = None  # sized by PREFILTER_MAP_SIZE with prefilter4_exact
    KEY = PrefilterPrefix
    VALUE = PrefilterCounters

    def entries(self) -> dict[str, PrefilterCounters]:
        return {k.prefix: v for k, v in self.items()}
