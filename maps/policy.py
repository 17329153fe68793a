"""The `policy` LPM trie: (endpoint, direction, identity, protocol, port
prefix) -> allow or deny, and the rule it came from. Mirrors
bpf/lib/policy.h; daemon/policy_compile.py makes the entries."""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass

from porin.maps import map_types
from porin.maps.pinned import PinnedMap

POLICY_F_DENY = 1
PREFIX_ANY_PROTO = 64
PREFIX_ANY_PORT = 80
PREFIX_FULL = 96
DIRECTIONS = {"ingress": 1, "egress": 2}  # DIR_* of bpf/lib/reasons.h
DIRECTION_NAMES = {v: k for k, v in DIRECTIONS.items()}


class PolicyKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("dir", ctypes.c_uint8),
        ("pad0", ctypes.c_uint8),
        ("identity", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("pad1", ctypes.c_uint8),
        ("dport", ctypes.c_uint16),  # network order
    ]


class PolicyValue(ctypes.Structure):
    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class PolicyMapKey:
    """One entry's key: protocol 0 is any protocol (and any port); port_bits
    says how many leading bits of `port` must match (0: any port)."""

    ep_id: int
    direction: str  # "ingress" / "egress"
    identity: int  # 0: any
    proto: int
    port: int
    port_bits: int

    def to_c(self) -> PolicyKey:
        if not self.proto:
            plen = PREFIX_ANY_PROTO
        else:
            plen = PREFIX_ANY_PORT + self.port_bits
        return PolicyKey(
            prefixlen=plen,
            ep_id=self.ep_id,
            dir=DIRECTIONS[self.direction],
            identity=self.identity,
            proto=self.proto,
            dport=socket.htons(self.port) if self.proto else 0,
        )

    @classmethod
    def from_c(cls, k: PolicyKey) -> PolicyMapKey:
        proto = k.proto if k.prefixlen >= PREFIX_ANY_PORT else 0
        bits = max(0, k.prefixlen - PREFIX_ANY_PORT) if proto else 0
        return cls(
            k.ep_id,
            DIRECTION_NAMES.get(k.dir, str(k.dir)),
            k.identity,
            proto,
            socket.ntohs(k.dport) if proto else 0,
            bits,
        )

    @property
    def port_range(self) -> tuple[int, int]:
        """The ports it covers (0, 65535 for any)."""
        if not self.port_bits:
            return 0, 65535
        size = 1 << (16 - self.port_bits)
        return self.port, self.port + size - 1


class PolicyMap(PinnedMap[PolicyKey, PolicyValue]):
    NAME = "policy"
    TYPE = map_types.LPM_TRIE
    FLAGS = map_types.BPF_F_NO_PREALLOC
    SIZE = "policy_map_size"
    SIZE_FLAG = "POLICY_MAP_SIZE"
    KEY = PolicyKey
    VALUE = PolicyValue

    def write(self, key: PolicyMapKey, rule_id: int, deny: bool) -> None:
        """Create or change an entry, keeping its counters."""
        k = key.to_c()
        cur = self.get(k)
        v = cur if cur is not None else PolicyValue()
        v.rule_id = rule_id
        v.flags = POLICY_F_DENY if deny else 0
        self.put(k, v)

    def remove(self, key: PolicyMapKey) -> bool:
        return self.delete(key.to_c())

    def entries(self) -> list[tuple[PolicyMapKey, PolicyValue]]:
        return [(PolicyMapKey.from_c(k), v) for k, v in self.items()]
