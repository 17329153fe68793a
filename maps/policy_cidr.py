"""The `policy_cidr` LPM trie: every IPv4 prefix a policy names -> its CIDR
identity (daemon/policy_compile.py). Mirrors bpf/lib/policy.h."""

from __future__ import annotations

import ctypes
import socket

from porin.maps import map_types
from porin.maps.pinned import PinnedMap


class PolicyCidrKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip", ctypes.c_uint8 * 4)]

    @classmethod
    def of(cls, cidr: str) -> PolicyCidrKey:
        addr, _, plen = cidr.partition("/")
        return cls(prefixlen=int(plen or 32), ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(addr)))

    @property
    def prefix(self) -> str:
        return f"{socket.inet_ntoa(bytes(self.ip))}/{self.prefixlen}"


class PolicyCidrMap(PinnedMap[PolicyCidrKey, ctypes.c_uint32]):
    """`policy_cidr`: every IPv4 prefix a policy names -> its CIDR identity."""

    NAME = "policy_cidr"
    TYPE = map_types.LPM_TRIE
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = "policy_cidr_map_size"
    SIZE_FLAG = "POLICY_CIDR_MAP_SIZE"
    KEY = PolicyCidrKey
    VALUE = ctypes.c_uint32

    def write(self, cidr: str, identity: int) -> None:
        self.put(PolicyCidrKey.of(cidr), ctypes.c_uint32(identity))

    def remove(self, cidr: str) -> bool:
        return self.delete(PolicyCidrKey.of(cidr))

    def entries(self) -> dict[str, int]:
        return {k.prefix: v.value for k, v in self.items()}
