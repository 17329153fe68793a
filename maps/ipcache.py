"""The `ipcache` LPM trie: prefix -> (security identity, tunnel endpoint).

Mirrors bpf/lib/ipcache.h.
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, ip_to_be
from porin.maps.pinned import PinnedMap

IPCACHE_F_NODE = 1

IDENTITY_UNKNOWN = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_REMOTE_NODE = 6
IDENTITY_FIRST_ALLOCATED = 256
RESERVED_IDENTITIES = {
    IDENTITY_HOST: "reserved:host",
    IDENTITY_WORLD: "reserved:world",
    IDENTITY_REMOTE_NODE: "reserved:remote-node",
}


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip", ctypes.c_uint32)]

    @classmethod
    def of(cls, cidr: str) -> IpcacheKey:
        net = ipaddress.IPv4Network(cidr if "/" in cidr else f"{cidr}/32", strict=False)
        return cls(prefixlen=net.prefixlen, ip=ip_to_be(str(net.network_address)))

    @property
    def prefix(self) -> str:
        return f"{be_to_ip(self.ip)}/{self.prefixlen}"


class RemoteEndpointInfo(ctypes.Structure):
    _fields_ = [
        ("sec_identity", ctypes.c_uint32),
        ("tunnel_endpoint", ctypes.c_uint32),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


@dataclass(frozen=True)
class IpcacheEntry:
    prefix: str
    identity: int
    tunnel_endpoint: str  # "" when not behind a tunnel
    node: bool = False

    def to_c(self) -> tuple[IpcacheKey, RemoteEndpointInfo]:
        return IpcacheKey.of(self.prefix), RemoteEndpointInfo(
            sec_identity=self.identity,
            tunnel_endpoint=ip_to_be(self.tunnel_endpoint) if self.tunnel_endpoint else 0,
            flags=IPCACHE_F_NODE if self.node else 0,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class IpcacheMap(PinnedMap[IpcacheKey, RemoteEndpointInfo]):
    NAME = "ipcache"
    TYPE = map_types.LPM_TRIE
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = 65536
    SIZE_FLAG = "IPCACHE_MAP_SIZE"
    KEY = IpcacheKey
    VALUE = RemoteEndpointInfo

    def upsert(self, e: IpcacheEntry) -> None:
        self.put(*e.to_c())

    def remove(self, prefix: str) -> bool:
        return self.delete(IpcacheKey.of(prefix))

    def entries(self) -> list[IpcacheEntry]:
        out = [
            IpcacheEntry(
                prefix=k.prefix,
                identity=v.sec_identity,
                tunnel_endpoint=be_to_ip(v.tunnel_endpoint) if v.tunnel_endpoint else "",
                node=bool(v.flags & IPCACHE_F_NODE),
            )
            for k, v in self.items()
        ]
        return sorted(out, key=lambda e: ipaddress.IPv4Network(e.prefix))
