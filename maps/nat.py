"""The `nat4` map: masquerade translations on the node's uplinks (bpf/lib/snat.h).

Two entries per flow, each keyed by the tuple as the packet carries it:
OUT {pod, peer, pod port, peer port} -> {node IP, NAT port} and
IN {peer, node IP, peer port, NAT port} -> {pod, pod port}.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from typing import Any

from porin.maps import map_types
from porin.maps.conntrack import monotonic_seconds
from porin.maps.lb_common import be_to_ip, be_to_port, proto_name
from porin.maps.pinned import PinnedMap

NAT_DIR_OUT = 1
NAT_DIR_IN = 2


class NatKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class NatEntry(ctypes.Structure):
    _fields_ = [
        ("to_addr", ctypes.c_uint32),
        ("to_port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("created", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


def counterpart(k: NatKey, v: NatEntry) -> NatKey:
    """The other half of a translation: the IN key of an OUT entry (the peer's
    replies to the translated address), or the OUT key of an IN entry."""
    if k.dir == NAT_DIR_OUT:
        return NatKey(
            saddr=k.daddr,
            daddr=v.to_addr,
            sport=k.dport,
            dport=v.to_port,
            proto=k.proto,
            dir=NAT_DIR_IN,
        )
    return NatKey(
        saddr=v.to_addr,
        daddr=k.saddr,
        sport=v.to_port,
        dport=k.sport,
        proto=k.proto,
        dir=NAT_DIR_OUT,
    )


@dataclass(frozen=True)
class Translation:
    proto: str
    direction: str  # OUT: pod -> world, source translated; IN: world -> node, destination
    src: str
    sport: int
    dst: str
    dport: int
    xlate_addr: str
    xlate_port: int
    created_ago: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decode(k: NatKey, v: NatEntry, now: int) -> Translation:
    return Translation(
        proto=proto_name(k.proto),
        direction="OUT" if k.dir == NAT_DIR_OUT else "IN",
        src=be_to_ip(k.saddr),
        sport=be_to_port(k.sport),
        dst=be_to_ip(k.daddr),
        dport=be_to_port(k.dport),
        xlate_addr=be_to_ip(v.to_addr),
        xlate_port=be_to_port(v.to_port),
        created_ago=max(0, now - v.created),
    )


class NatMap(PinnedMap[NatKey, NatEntry]):
    NAME = "nat4"
    TYPE = map_types.HASH
    SIZE = "nat_map_size"
    SIZE_FLAG = "NAT_MAP_SIZE"
    KEY = NatKey
    VALUE = NatEntry
    BATCH = 8192

    def translations(self) -> list[Translation]:
        now = monotonic_seconds()
        return [decode(k, v, now) for k, v in self.dump()]

    def flush(self) -> int:
        return self.clear()
