"""The `endpoint_slots` map: the direct-mapped front of the endpoints table.

An array indexed by the low ENDPOINT_SLOT_BITS bits of an endpoint's IPv4
address (bpf/lib/endpoint.h). A slot holds one endpoint, or is empty (ip 0);
ENDPOINT_F_SLOT_SHARED marks a slot whose index other endpoints share, which
then live only in the `endpoints` hash. `EndpointsMap` keeps both maps in
step through `place` and `vacate`; nothing else writes slots.

Array updates are not atomic for a concurrent reader, so a slot that starts
holding another address is written twice: with ip 0 first (a packet then
falls through to the hash or misses), then with the address.
"""

from __future__ import annotations

import ctypes
import ipaddress

from porin.maps import map_types
from porin.maps.endpoints import ENDPOINT_F_SLOT_SHARED, EndpointInfo
from porin.maps.pinned import PinnedMap, U32Key

SlotIndex = U32Key  # the array index
ENDPOINT_SLOT_BITS = 16  # the slot of an address: its low 16 bits (ENDPOINT_SLOT_BITS in C)


class EndpointSlotsMap(PinnedMap[SlotIndex, EndpointInfo]):
    NAME = "endpoint_slots"
    TYPE = map_types.ARRAY
    SIZE = 1 << ENDPOINT_SLOT_BITS
    KEY = SlotIndex
    VALUE = EndpointInfo

    def index(self, ip: str) -> int:
        return int(ipaddress.IPv4Address(ip)) & (self.max_entries - 1)

    def slot(self, index: int) -> EndpointInfo:
        got = self.get(SlotIndex(index))
        return got if got is not None else EndpointInfo()

    def write(self, index: int, info: EndpointInfo) -> None:
        self.put(SlotIndex(index), info)

    def place(self, index: int, info: EndpointInfo, shared: bool) -> None:
        """Make slot `index` hold `info` (whose `ip` is set), as a reader may
        see it at any moment: a slot taken over from another address (or from
        none) shows ip 0 until every other field is in place."""
        cur = self.slot(index)
        want = EndpointInfo.from_buffer_copy(bytes(info))
        want.flags = (want.flags & ~ENDPOINT_F_SLOT_SHARED) | (
            ENDPOINT_F_SLOT_SHARED if shared else 0
        )
        if bytes(cur) == bytes(want):
            return
        moved = bytes(cur.ip) != bytes(want.ip) or (
            (cur.ifindex, bytes(cur.mac), bytes(cur.node_mac))
            != (want.ifindex, bytes(want.mac), bytes(want.node_mac))
        )
        if moved:
            staged = EndpointInfo.from_buffer_copy(bytes(want))
            staged.ip = (ctypes.c_uint8 * 4)()
            # while staged, a shared slot must keep sending lookups to the hash
            if shared or cur.flags & ENDPOINT_F_SLOT_SHARED:
                staged.flags |= ENDPOINT_F_SLOT_SHARED
            self.write(index, staged)
        self.write(index, want)

    def vacate(self, index: int, shared: bool) -> None:
        """Empty slot `index`, keeping lookups on the hash if `shared`."""
        empty = EndpointInfo()
        if shared:
            empty.flags = ENDPOINT_F_SLOT_SHARED
        self.write(index, empty)

    def occupied(self) -> dict[int, EndpointInfo]:
        """Non-empty slots (holding an endpoint, or only marked shared)."""
        return {k.index: v for k, v in self.dump(skip_zero=True)}
