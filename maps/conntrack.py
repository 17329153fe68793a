"""The `ct4_global` map: connection tracking for all pod traffic.

An LRU; confirmed flows also have a copy in `ct4_confirmed`
(maps/conntrack_confirmed.py) that the datapath puts back when the LRU
evicted their entry; maps/conntrack_tables.py reads and writes both as one.

Mirrors `struct ct4_key` / `struct ct4_entry` in bpf/lib/conntrack.h. Unlike
Cilium's, the key is the tuple *as the initiator sent it*: `src` is always
the side that opened the connection and `dst` the side it connected to, so
a listing reads the way the connection was made.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import asdict, dataclass
from typing import Any

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, be_to_port, ip_to_be, port_to_be, proto_name
from porin.maps.pinned import PinnedMap

STATES = {
    0: "NEW",
    1: "SYN_SENT",
    2: "SYN_RECV",
    3: "ESTABLISHED",
    4: "FIN_WAIT",
    5: "CLOSING",
    6: "CLOSED",
    7: "REPLIED",
}
DIRS = {1: "OUT", 2: "IN"}
CT_F_HAIRPIN = 1
CT_F_TX_FIN = 2
CT_F_RX_FIN = 4
CT_F_RELATED = 8
CT_F_MULTI_CPU = 16  # bulk packets from several CPUs: delivered through the veth
CT_F_DSR = 32  # came in DSR: replies are sourced from the frontend in dsr4
CT_F_PROTECTED = 64  # confirmed: a copy is in ct4_confirmed
CT_F_UNPROTECTED = 128  # confirmed while ct4_confirmed was full: no copy

LEGACY_KEY_SERVICE = 1  # key flag of service entries written by older builds

TCP_FLAG_NAMES = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"))


class CtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]

    @classmethod
    def of(cls, src: str, dst: str, sport: int, dport: int, proto: int) -> CtKey:
        """The key of a flow as its initiator sent it."""
        return cls(
            saddr=ip_to_be(src),
            daddr=ip_to_be(dst),
            sport=port_to_be(sport),
            dport=port_to_be(dport),
            proto=proto,
        )


class CtEntry(ctypes.Structure):
    _fields_ = [
        ("tx_packets", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
        ("rx_packets", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("lifetime", ctypes.c_uint32),
        ("created", ctypes.c_uint32),
        ("backend_id", ctypes.c_uint32),
        ("rev_nat", ctypes.c_uint16),
        ("tx_flags", ctypes.c_uint8),
        ("rx_flags", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("bulk_cpu", ctypes.c_uint8),
        ("peer_seen", ctypes.c_uint32),
        ("egress_rev", ctypes.c_uint32),
        ("ingress_rev", ctypes.c_uint32),
    ]


LIFETIME_OFFSET = CtEntry.lifetime.offset


def monotonic_seconds() -> int:
    """The datapath's clock, whole seconds of CLOCK_MONOTONIC (bpf/lib/clock.h).

    The datapath derives it from jiffies, which may trail this by up to a
    second: lifetimes are tens of seconds or more, so it does not matter.
    """
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


def flag_names(flags: int) -> str:
    return "|".join(n for bit, n in TCP_FLAG_NAMES if flags & bit) or "-"


@dataclass(frozen=True)
class Connection:
    """One conntrack entry, decoded. `src` opened the connection to `dst`."""

    proto: str
    direction: str  # OUT: a local pod opened it; IN: opened towards a local pod
    service: bool  # the flow entry of a service flow (client -> frontend, names the backend)
    src: str
    sport: int
    dst: str
    dport: int
    state: str
    expires_in: int
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    tx_flags: str
    rx_flags: str
    rev_nat: int
    backend_id: int
    hairpin: bool
    related: bool
    multi_cpu: bool  # bulk packets from several CPUs: delivered through the veth
    dsr: bool  # came in DSR from the frontend node
    age: int
    protected: bool  # confirmed, with a copy a flood cannot evict (ct4_confirmed)
    unprotected: bool  # confirmed while ct4_confirmed was full: no copy
    evicted: bool = False  # only its copy is left: the next packet puts it back

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decode(key: CtKey, e: CtEntry, now: int) -> Connection:
    return Connection(
        proto=proto_name(key.proto),
        direction=DIRS.get(e.dir, "?"),
        service=e.backend_id != 0,
        src=be_to_ip(key.saddr),
        sport=be_to_port(key.sport),
        dst=be_to_ip(key.daddr),
        dport=be_to_port(key.dport),
        state=STATES.get(e.state, str(e.state)),
        expires_in=e.lifetime - now,
        tx_packets=e.tx_packets,
        tx_bytes=e.tx_bytes,
        rx_packets=e.rx_packets,
        rx_bytes=e.rx_bytes,
        tx_flags=flag_names(e.tx_flags),
        rx_flags=flag_names(e.rx_flags),
        rev_nat=e.rev_nat,
        backend_id=e.backend_id,
        hairpin=bool(e.flags & CT_F_HAIRPIN),
        related=bool(e.flags & CT_F_RELATED),
        multi_cpu=bool(e.flags & CT_F_MULTI_CPU),
        dsr=bool(e.flags & CT_F_DSR),
        age=now - e.created,
        protected=bool(e.flags & CT_F_PROTECTED),
        unprotected=bool(e.flags & CT_F_UNPROTECTED),
    )


class ConntrackMap(PinnedMap[CtKey, CtEntry]):
    NAME = "ct4_global"
    TYPE = map_types.LRU_HASH
    SIZE = "ct_map_size"
    SIZE_FLAG = "CT_MAP_SIZE"
    KEY = CtKey
    VALUE = CtEntry
    BATCH = 8192

    def raw_entries(self) -> list[tuple[CtKey, CtEntry]]:
        return self.dump()

    def connections(self) -> list[Connection]:
        now = monotonic_seconds()
        return [decode(k, v, now) for k, v in self.raw_entries()]

    def delete_raw(self, keys: bytes, count: int) -> int:
        """Delete `count` keys packed back to back in `keys` (BPF_MAP_DELETE_BATCH)."""
        return self.delete_packed(keys, count)

    def adopt_legacy_service_entries(self, drop_legacy: bool) -> int:
        """Builds before the one-lookup fast path kept a service flow's backend
        under the client -> frontend tuple with key flag 1; today's datapath
        looks for it under flag 0. Copy such entries to flag 0 (where none is
        yet), so connections keep their backend across the upgrade; with
        `drop_legacy`, once no old program is attached any more, remove the
        originals. Returns how many were copied."""
        entries = self.raw_entries()
        present = {bytes(k) for k, _ in entries if k.flags == 0}
        legacy = [(k, e) for k, e in entries if k.flags == LEGACY_KEY_SERVICE]
        copies = []
        for k, e in legacy:
            new = CtKey.from_buffer_copy(bytes(k))
            new.flags = 0
            if bytes(new) in present:
                continue
            e.peer_seen = 0  # renew its reply entry on the next packet
            copies.append((new, e))
        self.put_many(copies)
        if drop_legacy:
            self.delete_many([k for k, _ in legacy])
        return len(copies)

    def flush(self) -> int:
        keys, _vals, n = self.dump_raw()
        return self.delete_raw(keys, n)
