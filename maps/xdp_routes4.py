"""`xdp_routes4`: the XDP balancer's route cache, backend address -> its
node, the device and MACs towards it and the route's MTU, for a second or
two (bpf/lib/xdp_lb.h). An LRU; the datapath refills it."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap


class BackendAddr(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint8 * 4)]


class XdpRoute(ctypes.Structure):
    _fields_ = [
        ("node", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("expires", ctypes.c_uint32),
        ("smac", ctypes.c_uint8 * 6),
        ("dmac", ctypes.c_uint8 * 6),
        ("mtu", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class XdpRoutesMap(PinnedMap[BackendAddr, XdpRoute]):
    NAME = "xdp_routes4"
    TYPE = map_types.LRU_HASH
    SIZE = 16384
    SIZE_FLAG = "XDP_ROUTES4_MAP_SIZE"
    KEY = BackendAddr
    VALUE = XdpRoute
