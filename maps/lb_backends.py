"""The `lb4_backends` map: backends by id (bpf/lib/lb.h).

An array of slots: backend id N lives in slot N % size and carries N, so
the datapath finds it with one inlined array access and tells a dangling id
(its backend removed, the slot since reused) from the slot's holder. The
agent hands out ids whose slot is free (daemon/services.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port, ip_to_be, port_to_be
from porin.maps.pinned import PinnedMap

BACKEND_STATES = {"active": 0, "terminating": 1, "maintenance": 2}
BACKEND_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}


class BackendSlot(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32)]


class Lb4Backend(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
        ("id", ctypes.c_uint32),
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


class BackendsMap(PinnedMap[BackendSlot, Lb4Backend]):
    NAME = "lb4_backends"
    TYPE = map_types.ARRAY
    SIZE = 131072
    SIZE_FLAG = "LB_BACKENDS_MAP_SIZE"
    KEY = BackendSlot
    VALUE = Lb4Backend

    def slot_of(self, backend_id: int) -> int:
        return backend_id & (self.max_entries - 1)

    def put_backends(self, pairs: Iterable[tuple[int, Lb4Backend]]) -> None:
        """Write backends by id. An array update is not atomic for a reader,
        but no packet looks a new id up before the agent publishes the
        frontend slots that name it, and an id's address never changes
        (only its state, one byte)."""
        batch = []
        for bid, b in pairs:
            b.id = bid
            batch.append((BackendSlot(self.slot_of(bid)), b))
        self.put_many(batch)

    def remove_backends(self, ids: Iterable[int]) -> int:
        """Empty the slots that still hold these ids; returns how many did."""
        empty = []
        for bid in ids:
            key = BackendSlot(self.slot_of(bid))
            cur = self.get(key)
            if cur is not None and cur.id == bid:
                empty.append((key, Lb4Backend()))
        self.put_many(empty)
        return len(empty)

    def backends(self) -> dict[int, Lb4Backend]:
        """Every backend, by id."""
        return {b.id: b for _, b in self.dump(skip_zero=True) if b.id}

    def clear(self) -> int:
        return self.remove_backends(list(self.backends()))
