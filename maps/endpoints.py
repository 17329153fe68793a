"""The `endpoints` map: pod IPv4 address -> delivery and validation info.

Mirrors `struct endpoint_key` / `struct endpoint_info` in bpf/lib/endpoint.h.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from dataclasses import dataclass

from porin.maps.pinned import PinnedMap


class EndpointKey(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint8 * 4)]

    @classmethod
    def of(cls, ip: str) -> EndpointKey:
        return cls((ctypes.c_uint8 * 4)(*socket.inet_aton(ip)))

    @property
    def address(self) -> str:
        return socket.inet_ntoa(bytes(self.ip))


class EndpointInfo(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("mac", ctypes.c_uint8 * 6),
        ("node_mac", ctypes.c_uint8 * 6),
        ("sec_identity", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


def mac_bytes(mac: str) -> ctypes.Array:
    return (ctypes.c_uint8 * 6)(*bytes.fromhex(mac.replace(":", "")))


def mac_str(raw: ctypes.Array) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


@dataclass(frozen=True)
class EndpointEntry:
    """One endpoint as the datapath sees it."""

    ip: str
    ifindex: int
    endpoint_id: int
    mac: str
    node_mac: str
    identity: int = 0
    flags: int = 0

    def to_c(self) -> tuple[EndpointKey, EndpointInfo]:
        ipaddress.IPv4Address(self.ip)
        info = EndpointInfo(
            ifindex=self.ifindex,
            ep_id=self.endpoint_id,
            flags=self.flags,
            mac=mac_bytes(self.mac),
            node_mac=mac_bytes(self.node_mac),
            sec_identity=self.identity,
        )
        return EndpointKey.of(self.ip), info

    @classmethod
    def from_c(cls, key: EndpointKey, info: EndpointInfo) -> EndpointEntry:
        return cls(
            ip=key.address,
            ifindex=info.ifindex,
            endpoint_id=info.ep_id,
            mac=mac_str(info.mac),
            node_mac=mac_str(info.node_mac),
            identity=info.sec_identity,
            flags=info.flags,
        )


class EndpointsMap(PinnedMap[EndpointKey, EndpointInfo]):
    NAME = "endpoints"
    KEY = EndpointKey
    VALUE = EndpointInfo

    def upsert(self, entry: EndpointEntry) -> None:
        self.put(*entry.to_c())

    def lookup(self, ip: str) -> EndpointEntry | None:
        key = EndpointKey.of(ip)
        info = self.get(key)
        return None if info is None else EndpointEntry.from_c(key, info)

    def remove(self, ip: str) -> bool:
        return self.delete(EndpointKey.of(ip))

    def entries(self) -> list[EndpointEntry]:
        return sorted(
            (EndpointEntry.from_c(k, v) for k, v in self.items()),
            key=lambda e: ipaddress.IPv4Address(e.ip),
        )
