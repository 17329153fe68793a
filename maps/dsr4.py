"""`dsr4`: on a backend's node, {client, backend, ports, protocol} -> the
frontend a DSR flow came in for, so the backend's replies are sourced from
it (bpf/lib/dsr.h). An LRU: entries of ended flows age out."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port
from porin.maps.pinned import PinnedMap


class Dsr4Key(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint32),
        ("backend", ctypes.c_uint32),
        ("client_port", ctypes.c_uint16),
        ("backend_port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]

    def describe(self) -> str:
        return (
            f"{be_to_ip(self.client)}:{be_to_port(self.client_port)} -> "
            f"{be_to_ip(self.backend)}:{be_to_port(self.backend_port)}"
        )


class Dsr4Frontend(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]

    def describe(self) -> str:
        return f"{be_to_ip(self.address)}:{be_to_port(self.port)}"


class Dsr4Map(PinnedMap[Dsr4Key, Dsr4Frontend]):
    NAME = "dsr4"
    TYPE = map_types.LRU_HASH
    SIZE = 65536
    SIZE_FLAG = "DSR4_MAP_SIZE"
    KEY = Dsr4Key
    VALUE = Dsr4Frontend
