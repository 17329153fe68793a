"""The `lb4_affinity` map: {client IP, reverse-NAT id} -> {backend id, last used}."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip
from porin.maps.pinned import PinnedMap


class AffinityKey(ctypes.Structure):
    _fields_ = [("client", ctypes.c_uint32), ("rev_nat", ctypes.c_uint16), ("pad", ctypes.c_uint16)]

    @property
    def client_ip(self) -> str:
        return be_to_ip(self.client)


class AffinityValue(ctypes.Structure):
    _fields_ = [("backend_id", ctypes.c_uint32), ("last_used", ctypes.c_uint32)]


class AffinityMap(PinnedMap[AffinityKey, AffinityValue]):
    NAME = "lb4_affinity"
    TYPE = map_types.LRU_HASH
    SIZE = 65536
    SIZE_FLAG = "LB_AFFINITY_MAP_SIZE"
    KEY = AffinityKey
    VALUE = AffinityValue

    def forget_service(self, rev_nat: int) -> int:
        return self.forget_services({rev_nat})

    def forget_services(self, rev_nats: set[int]) -> int:
        """Drop the affinity of every client to these frontends."""
        return self.delete_many([k for k in self.keys() if k.rev_nat in rev_nats])
