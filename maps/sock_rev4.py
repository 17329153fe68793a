"""`sock_rev4`: {socket cookie, backend address, port} -> the frontend the
socket asked for, written by bpf_sock.c's connect and sendmsg hooks and read
by its recvmsg and getpeername hooks (bpf/lib/sock.h)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip
from porin.maps.pinned import PinnedMap


class SockRevKey(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]

    @property
    def ip(self) -> str:
        return be_to_ip(self.address)


class SockRevValue(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]

    @property
    def ip(self) -> str:
        return be_to_ip(self.address)


class SockRev4Map(PinnedMap[SockRevKey, SockRevValue]):
    NAME = "sock_rev4"
    TYPE = map_types.LRU_HASH
    SIZE = 65536
    SIZE_FLAG = "SOCK_REV4_MAP_SIZE"
    KEY = SockRevKey
    VALUE = SockRevValue
