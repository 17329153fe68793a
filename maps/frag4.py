"""`frag4`: the ports of fragmented datagrams, by {source, destination, IP
id, protocol}, remembered from their first fragment so the others follow it
(bpf/lib/frag.h). An LRU: datagrams age out."""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import Any

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port
from porin.maps.pinned import PinnedMap

PROTO_NAMES = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}


class Frag4Key(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("id", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Frag4Ports(ctypes.Structure):
    _fields_ = [("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16)]


@dataclass(frozen=True)
class Datagram:
    src: str
    dst: str
    ip_id: int
    proto: str
    sport: int
    dport: int

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "ipID": self.ip_id,
            "protocol": self.proto,
            "sport": self.sport,
            "dport": self.dport,
        }


class Frag4Map(PinnedMap[Frag4Key, Frag4Ports]):
    NAME = "frag4"
    TYPE = map_types.LRU_HASH
    SIZE = 8192
    SIZE_FLAG = "FRAG4_MAP_SIZE"
    KEY = Frag4Key
    VALUE = Frag4Ports

    def datagrams(self) -> list[Datagram]:
        return [
            Datagram(
                be_to_ip(k.saddr),
                be_to_ip(k.daddr),
                socket.ntohs(k.id),
                PROTO_NAMES.get(k.proto, str(k.proto)),
                be_to_port(v.sport),
                be_to_port(v.dport),
            )
            for k, v in self.items()
        ]
