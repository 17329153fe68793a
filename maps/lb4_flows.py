"""`lb4_flows`: the NodePort balancer's flow table (Katran's LRU), {client,
frontend, ports, protocol} -> {backend id, the frontend's reverse-NAT id},
written by XDP and by tc, so a flow keeps its backend whichever path a
packet takes; LRU lists per CPU (BPF_F_NO_COMMON_LRU), as bpf/lib/lb.h
declares it."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port
from porin.maps.pinned import PinnedMap

BPF_F_NO_COMMON_LRU = 2


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint32),
        ("frontend", ctypes.c_uint32),
        ("client_port", ctypes.c_uint16),
        ("frontend_port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]

    def describe(self) -> str:
        return (
            f"{be_to_ip(self.client)}:{be_to_port(self.client_port)} -> "
            f"{be_to_ip(self.frontend)}:{be_to_port(self.frontend_port)}"
        )


class Flow(ctypes.Structure):
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("rev_nat", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Lb4FlowsMap(PinnedMap[FlowKey, Flow]):
    NAME = "lb4_flows"
    TYPE = map_types.LRU_HASH
    FLAGS = BPF_F_NO_COMMON_LRU
    SIZE = 65536
    SIZE_FLAG = "LB4_FLOWS_MAP_SIZE"
    KEY = FlowKey
    VALUE = Flow
