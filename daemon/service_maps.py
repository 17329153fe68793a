"""What a service plan writes, family-neutral, and the writer that turns it
into map entries.

`daemon/services.py` plans: it emits the records below in publication order
(backends, Maglev tables, backend slots, reverse NAT, then each frontend's
slot 0) and what the new version no longer needs. The records carry
addresses as `ipaddress` objects; `LbMaps` is the IPv4 writer, turning them
into the `lb4_*` entries of bpf/lib/lb.h (IPv6 adds its maps and a writer
for them, not another planner). Every map write is atomic on its own, so
with this order a packet sees the old service or the new one.
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from dataclasses import dataclass, field

from porin.maps.lb_affinity import AffinityMap
from porin.maps.lb_backends import BACKEND_STATES, BackendsMap, Lb4Backend
from porin.maps.lb_common import port_to_be
from porin.maps.lb_maglev import MaglevMap
from porin.maps.lb_reverse_nat import Lb4ReverseNat, ReverseNatMap, RevNatId
from porin.maps.lb_services import Lb4Key, Lb4Service, ServicesMap

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1 << 17)
def address_of(text: str) -> IPAddress:
    """The address object of a model's address text (cached: a batch of
    10,000 services names each address several times)."""
    return ipaddress.ip_address(text)


@dataclass(frozen=True)
class FrontendSlot:
    """One slot of a frontend: 0 is the service itself, 1..count its backends."""

    address: IPAddress
    port: int
    proto: int
    slot: int = 0


@dataclass(frozen=True)
class BackendRecord:
    id: int
    address: IPAddress
    port: int
    proto: int
    state: str


@dataclass(frozen=True)
class ServiceRecord:
    """A frontend's slot 0."""

    count: int
    rev_nat: int
    flags: int
    affinity_timeout: int


@dataclass(frozen=True)
class ReverseNatRecord:
    """Replies of frontend `id` are sourced from address:port."""

    id: int
    address: IPAddress
    port: int


@dataclass
class Plan:
    """Map writes for a batch of services, in publication order."""

    backends: list[BackendRecord] = field(default_factory=list)
    maglev: list[tuple[int, list[int]]] = field(default_factory=list)  # rev_nat id -> table
    slots: list[tuple[FrontendSlot, int]] = field(default_factory=list)  # -> backend id
    reverse_nat: list[ReverseNatRecord] = field(default_factory=list)
    masters: list[tuple[FrontendSlot, ServiceRecord]] = field(default_factory=list)
    stale_slots: list[FrontendSlot] = field(default_factory=list)
    stale_backends: list[int] = field(default_factory=list)
    stale_maglev: list[int] = field(default_factory=list)
    stale_rev_nat: list[int] = field(default_factory=list)
    used_backend_slots: set[int] = field(default_factory=set)  # lb4_backends slots taken


def _be4(address: IPAddress) -> int:
    """An IPv4 address as a __be32 key field (network order in memory)."""
    if address.version != 4:
        raise ValueError(f"{address}: IPv6 services need the lb6 maps, not there yet")
    return int.from_bytes(address.packed, sys.byteorder)


def key4(s: FrontendSlot) -> Lb4Key:
    return Lb4Key(address=_be4(s.address), dport=port_to_be(s.port), slot=s.slot, proto=s.proto)


@dataclass
class LbMaps:
    """The lb4_* maps, and the IPv4 writer of a plan."""

    services: ServicesMap
    backends: BackendsMap
    reverse_nat: ReverseNatMap
    maglev: MaglevMap
    affinity: AffinityMap

    @classmethod
    def open(cls, bpffs_root: str) -> LbMaps:
        return cls(
            ServicesMap(bpffs_root),
            BackendsMap(bpffs_root),
            ReverseNatMap(bpffs_root),
            MaglevMap(bpffs_root),
            AffinityMap(bpffs_root),
        )

    def publish(self, plan: Plan) -> None:
        """Write `plan` in publication order, then remove what it made stale."""
        self.backends.put_backends(
            [
                (
                    b.id,
                    Lb4Backend(
                        address=_be4(b.address),
                        port=port_to_be(b.port),
                        proto=b.proto,
                        state=BACKEND_STATES[b.state],
                    ),
                )
                for b in plan.backends
            ]
        )
        for rid, table in plan.maglev:
            self.maglev.put(rid, table)
        self.services.put_many([(key4(s), Lb4Service(backend_id=bid)) for s, bid in plan.slots])
        self.reverse_nat.put_many(
            [
                (RevNatId(r.id), Lb4ReverseNat(address=_be4(r.address), port=port_to_be(r.port)))
                for r in plan.reverse_nat
            ]
        )
        self.services.put_many(  # publish: slot 0 last
            [
                (
                    key4(s),
                    Lb4Service(
                        count=m.count,
                        rev_nat=m.rev_nat,
                        flags=m.flags,
                        affinity_timeout=m.affinity_timeout,
                    ),
                )
                for s, m in plan.masters
            ]
        )
        # a removed frontend goes with its slot 0 first, so no packet picks a missing slot
        self.services.delete_many([key4(s) for s in plan.stale_slots if s.slot == 0])
        self.services.delete_many([key4(s) for s in plan.stale_slots if s.slot != 0])
        self.backends.remove_backends(plan.stale_backends)
        written = {r.id for r in plan.reverse_nat}
        self.reverse_nat.delete_many([RevNatId(r) for r in plan.stale_rev_nat if r not in written])
        tables = {r for r, _ in plan.maglev}
        for rid in plan.stale_maglev:
            if rid not in tables:
                self.maglev.delete(rid)

    def sweep(
        self, slots: set[FrontendSlot], backends: set[int], rev_nats: set[int], maglevs: set[int]
    ) -> None:
        """Remove every entry the given sets do not name (left by a crash mid-change)."""
        want = {bytes(key4(s)) for s in slots}
        self.services.delete_many([k for k in self.services.keys() if bytes(k) not in want])
        self.backends.remove_backends([b for b in self.backends.backends() if b not in backends])
        self.reverse_nat.delete_many([k for k in self.reverse_nat.keys() if k.id not in rev_nats])
        for rid in self.maglev.ids():
            if rid not in maglevs:
                self.maglev.delete(rid)
        self.affinity.delete_many([k for k in self.affinity.keys() if k.rev_nat not in rev_nats])
