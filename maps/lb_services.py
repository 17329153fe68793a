"""The `lb4_services` map: {VIP, port, proto, slot} -> service / backend slot.

Mirrors `struct lb4_key` / `struct lb4_service` in bpf/lib/lb.h. Slot 0 is
the service itself (backend count, reverse-NAT id, flags, affinity timeout);
slots 1..count name the backend of each slot.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port, ip_to_be, port_to_be
from porin.maps.pinned import PinnedMap

LB_SERVICES_MAP_SIZE = 131072  # lb4_services and lb4_reverse_nat

SVC_F_MAGLEV = 1
SVC_F_AFFINITY = 2
SVC_F_XDP = 4  # a NodePort frontend XDP serves (dsr: every flow; snat: established ones)


class Lb4Key(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("dport", ctypes.c_uint16),
        ("slot", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]

    @classmethod
    def of(cls, ip: str, port: int, proto: int, slot: int = 0) -> Lb4Key:
        return cls(address=ip_to_be(ip), dport=port_to_be(port), slot=slot, proto=proto)

    @property
    def ip(self) -> str:
        return be_to_ip(self.address)

    @property
    def port(self) -> int:
        return be_to_port(self.dport)


class Lb4Service(ctypes.Structure):
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("rev_nat", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("affinity_timeout", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ServiceSlot:
    """One decoded entry of lb4_services."""

    ip: str
    port: int
    proto: int
    slot: int
    backend_id: int
    count: int
    rev_nat: int
    flags: int
    affinity_timeout: int


class ServicesMap(PinnedMap[Lb4Key, Lb4Service]):
    NAME = "lb4_services"
    TYPE = map_types.HASH
    SIZE = LB_SERVICES_MAP_SIZE
    SIZE_FLAG = "LB_SERVICES_MAP_SIZE"
    KEY = Lb4Key
    VALUE = Lb4Service

    def slots(self) -> list[ServiceSlot]:
        out = [
            ServiceSlot(
                k.ip,
                k.port,
                k.proto,
                k.slot,
                v.backend_id,
                v.count,
                v.rev_nat,
                v.flags,
                v.affinity_timeout,
            )
            for k, v in self.items()
        ]
        return sorted(out, key=lambda s: (s.ip, s.port, s.proto, s.slot))
