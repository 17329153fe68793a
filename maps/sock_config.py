"""`sock_config` (one entry): the network namespace cookie the socket hooks
of bpf/bpf_sock.c act in (bpf/lib/sock.h); 0 turns them off."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key


class SockConfig(ctypes.Structure):
    _fields_ = [("netns_cookie", ctypes.c_uint64)]


class SockConfigMap(PinnedMap[U32Key, SockConfig]):
    NAME = "sock_config"
    TYPE = map_types.ARRAY
    SIZE = 1
    KEY = U32Key
    VALUE = SockConfig

    def set(self, netns_cookie: int) -> None:
        self.put(U32Key(0), SockConfig(netns_cookie=netns_cookie))

    def current(self) -> int:
        cfg = self.get(U32Key(0))
        return cfg.netns_cookie if cfg else 0
