"""`prefilter4_lpm`: source prefixes XDP drops (bpf/lib/prefilter.h), each
naming its counter in `prefilter4_counts`. The trie holds every listed
prefix; `prefilter4_l16` and `prefilter4_l24` spare most packets the lookup."""

from __future__ import annotations

import ctypes
import socket

from porin.maps import map_types
from porin.maps.pinned import PinnedMap
from porin.maps.prefilter_exact import REBUILT_FROM, PrefilterEntry


class PrefilterPrefix(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip", ctypes.c_uint8 * 4)]

    @classmethod
    def of(cls, cidr: str) -> PrefilterPrefix:
        addr, _, plen = cidr.partition("/")
        return cls(prefixlen=int(plen), ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(addr)))

    @property
    def prefix(self) -> str:
        return f"{socket.inet_ntoa(bytes(self.ip))}/{self.prefixlen}"


class PrefilterLpmMap(PinnedMap[PrefilterPrefix, PrefilterEntry]):
    NAME = "prefilter4_lpm"
    TYPE = map_types.LPM_TRIE
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = "prefilter_map_size"
    SIZE_FLAG = None  # sized by PREFILTER_MAP_SIZE with prefilter4_exact
    KEY = PrefilterPrefix
    VALUE = PrefilterEntry
    REBUILT_FROM = REBUILT_FROM

    def entries(self) -> dict[str, int]:
        """Each listed prefix with its counter."""
        return {k.prefix: v.counter for k, v in self.items()}
