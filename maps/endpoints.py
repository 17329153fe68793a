"""The `endpoints` map: pod IPv4 address -> delivery and validation info.

Mirrors `struct endpoint_key` / `struct endpoint_info` in bpf/lib/endpoint.h.
`EndpointsMap` is the endpoints table as a whole: it also keeps the
datapath's direct-mapped front of it, `endpoint_slots`
(maps/endpoint_slots.py), in step with every change.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import threading
from dataclasses import dataclass

from porin.maps import map_types
from porin.maps.pinned import DEFAULT_BPFFS_ROOT, PinnedMap

ENDPOINT_F_SLOT_SHARED = 0x8000  # endpoint_slots only: other endpoints share the index
ENDPOINT_F_POLICY_INGRESS = 1  # isolated for ingress (bpf/lib/policy.h)
ENDPOINT_F_POLICY_EGRESS = 2


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
        ("ip", ctypes.c_uint8 * 4),
        ("policy_rev", ctypes.c_uint32),
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
    flags: int = 0  # ENDPOINT_F_POLICY_* (the slot's shared mark is the map's own)
    policy_rev: int = 0

    def to_c(self) -> tuple[EndpointKey, EndpointInfo]:
        ipaddress.IPv4Address(self.ip)
        info = EndpointInfo(
            ifindex=self.ifindex,
            ep_id=self.endpoint_id,
            flags=self.flags,
            mac=mac_bytes(self.mac),
            node_mac=mac_bytes(self.node_mac),
            sec_identity=self.identity,
            ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(self.ip)),
            policy_rev=self.policy_rev,
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
            policy_rev=info.policy_rev,
        )


class EndpointsMap(PinnedMap[EndpointKey, EndpointInfo]):
    """Every local endpoint (the hash), with the slots the datapath looks at
    first. Invariant after each call: an endpoint is either the holder of its
    slot, or its slot is marked shared; a shared mark is set only while some
    endpoint of that index lives in the hash alone."""

    NAME = "endpoints"
    TYPE = map_types.HASH
    SIZE = "endpoints_map_size"
    SIZE_FLAG = "ENDPOINTS_MAP_SIZE"
    KEY = EndpointKey
    VALUE = EndpointInfo

    def __init__(self, bpffs_root: str = DEFAULT_BPFFS_ROOT, read_only: bool = False) -> None:
        from porin.maps.endpoint_slots import EndpointSlotsMap

        super().__init__(bpffs_root, read_only)
        try:
            self.slots = EndpointSlotsMap(bpffs_root, read_only)
        except Exception:
            super().close()
            raise
        self._lock = threading.Lock()

    def close(self) -> None:
        if hasattr(self, "slots"):
            self.slots.close()
        super().close()

    def upsert(self, entry: EndpointEntry) -> None:
        key, info = entry.to_c()
        with self._lock:
            self.put(key, info)
            idx = self.slots.index(entry.ip)
            cur = self.slots.slot(idx)
            shared = bool(cur.flags & ENDPOINT_F_SLOT_SHARED)
            if not any(cur.ip) or bytes(cur.ip) == bytes(info.ip):
                self.slots.place(idx, info, shared)
            elif not shared:
                cur.flags |= ENDPOINT_F_SLOT_SHARED  # it stays in the hash alone
                self.slots.write(idx, cur)

    def lookup(self, ip: str) -> EndpointEntry | None:
        key = EndpointKey.of(ip)
        info = self.get(key)
        return None if info is None else EndpointEntry.from_c(key, info)

    def datapath_lookup(self, ip: str) -> EndpointEntry | None:
        """What lookup_endpoint() in bpf/lib/endpoint.h finds for `ip`."""
        key = EndpointKey.of(ip)
        slot = self.slots.slot(self.slots.index(ip))
        if bytes(slot.ip) == bytes(key.ip):
            slot.flags &= ~ENDPOINT_F_SLOT_SHARED
            return EndpointEntry.from_c(key, slot)
        if not slot.flags & ENDPOINT_F_SLOT_SHARED:
            return None
        return self.lookup(ip)

    def remove(self, ip: str) -> bool:
        key = EndpointKey.of(ip)
        with self._lock:
            idx = self.slots.index(ip)
            cur = self.slots.slot(idx)
            rest = []
            if cur.flags & ENDPOINT_F_SLOT_SHARED:
                rest = [
                    v
                    for k, v in self._hash_items()
                    if bytes(k.ip) not in (bytes(key.ip), bytes(cur.ip))
                    and self.slots.index(k.address) == idx
                ]
            if bytes(cur.ip) == bytes(key.ip):
                if rest:  # promote an endpoint that was in the hash alone
                    self.slots.place(idx, rest[0], shared=len(rest) > 1)
                else:
                    self.slots.vacate(idx, shared=False)
            elif cur.flags & ENDPOINT_F_SLOT_SHARED and not rest:
                cur.flags &= ~ENDPOINT_F_SLOT_SHARED
                self.slots.write(idx, cur)
            return self.delete(key)

    def sync_slots(self) -> int:
        """Rebuild the slots from the hash (agent start: the slots map may be
        new, or a crash may have cut a change short); returns slots rewritten."""
        with self._lock:
            by_index: dict[int, list[EndpointInfo]] = {}
            for k, v in self._hash_items():
                by_index.setdefault(self.slots.index(k.address), []).append(v)
            current = self.slots.occupied()
            changed = 0
            for idx, infos in by_index.items():
                cur = current.pop(idx, None)
                holder = next(
                    (v for v in infos if cur is not None and bytes(v.ip) == bytes(cur.ip)),
                    infos[0],
                )
                before = bytes(cur) if cur is not None else None
                self.slots.place(idx, holder, shared=len(infos) > 1)
                changed += bytes(self.slots.slot(idx)) != before
            for idx in current:
                self.slots.vacate(idx, shared=False)
                changed += 1
            return changed

    def clear(self) -> int:
        """Remove every endpoint (slots first: the datapath stops finding them)."""
        with self._lock:
            for idx in self.slots.occupied():
                self.slots.vacate(idx, shared=False)
            return super().clear()

    def _hash_items(self) -> list[tuple[EndpointKey, EndpointInfo]]:
        out = self.dump()
        for key, info in out:
            info.ip = key.ip  # the key is authoritative (entries of older builds carry 0)
        return out

    def entries(self) -> list[EndpointEntry]:
        return sorted(
            (EndpointEntry.from_c(k, v) for k, v in self._hash_items()),
            key=lambda e: ipaddress.IPv4Address(e.ip),
        )
