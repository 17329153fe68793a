"""The `lb4_backends` map: backend id -> {IP, port, proto, state} (bpf/lib/lb.h)."""

from __future__ import annotations

import ctypes

from porin.maps.lb_common import be_to_ip, be_to_port, ip_to_be, port_to_be
from porin.maps.pinned import PinnedMap

BACKEND_STATES = {"active": 0, "terminating": 1, "maintenance": 2}
BACKEND_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}


class BackendId(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32)]


class Lb4Backend(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
    ]

    @classmethod
    def of(cls, ip: str, port: int, proto: int, state: str = "active") -> Lb4Backend:
        return cls(
            address=ip_to_be(ip), port=port_to_be(port), proto=proto, state=BACKEND_STATES[state]
        )

    @property
    def ip(self) -> str:
        return be_to_ip(self.address)

    @property
    def host_port(self) -> int:
        return be_to_port(self.port)

    @property
    def state_name(self) -> str:
        return BACKEND_STATE_NAMES.get(self.state, str(self.state))


class BackendsMap(PinnedMap[BackendId, Lb4Backend]):
    NAME = "lb4_backends"
    KEY = BackendId
    VALUE = Lb4Backend

    def backends(self) -> dict[int, Lb4Backend]:
        return {k.id: v for k, v in self.items()}
