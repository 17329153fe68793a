"""The `nonmasq_cidrs` LPM trie: destinations pods reach without masquerade."""

from __future__ import annotations

import ctypes
import ipaddress

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, ip_to_be
from porin.maps.pinned import PinnedMap


class LpmKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]

    @classmethod
    def of(cls, cidr: str) -> LpmKey:
        net = ipaddress.IPv4Network(cidr)
        return cls(prefixlen=net.prefixlen, addr=ip_to_be(str(net.network_address)))

    @property
    def cidr(self) -> str:
        return f"{be_to_ip(self.addr)}/{self.prefixlen}"


class Present(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint8)]


class NonMasqMap(PinnedMap[LpmKey, Present]):
    NAME = "nonmasq_cidrs"
    TYPE = map_types.LPM_TRIE
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = 256
    SIZE_FLAG = "NONMASQ_MAP_SIZE"
    KEY = LpmKey
    VALUE = Present

    def sync(self, cidrs: list[str]) -> None:
        """Make the trie hold exactly `cidrs` (add first, then remove the rest)."""
        want = {LpmKey.of(c).cidr: LpmKey.of(c) for c in cidrs}
        for key in want.values():
            self.put(key, Present(1))
        for key in list(self.keys()):
            if key.cidr not in want:
                self.delete(key)

    def cidrs(self) -> list[str]:
        return sorted(k.cidr for k in self.keys())
