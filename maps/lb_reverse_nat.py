"""The `lb4_reverse_nat` map: reverse-NAT id -> frontend {VIP, port} (bpf/lib/lb.h)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port, ip_to_be, port_to_be
from porin.maps.lb_services import LB_SERVICES_MAP_SIZE
from porin.maps.pinned import PinnedMap


class RevNatId(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint16)]


class Lb4ReverseNat(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]

    @classmethod
    def of(cls, ip: str, port: int) -> Lb4ReverseNat:
        return cls(address=ip_to_be(ip), port=port_to_be(port))

    @property
    def ip(self) -> str:
        return be_to_ip(self.address)

    @property
    def host_port(self) -> int:
        return be_to_port(self.port)


class ReverseNatMap(PinnedMap[RevNatId, Lb4ReverseNat]):
    NAME = "lb4_reverse_nat"
    TYPE = map_types.HASH
    SIZE = LB_SERVICES_MAP_SIZE
    KEY = RevNatId
    VALUE = Lb4ReverseNat
