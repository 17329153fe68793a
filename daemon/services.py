"""Services: the agent's source of truth, programmed into the lb4_* maps.

A service has one frontend per address it answers on: its ClusterIP
(VIP:port, reverse-NAT id = service id) and, for type nodeport, the node
port on every node IP (reverse-NAT ids from 32768 up, so replies are
translated back to the address the client used).

A frontend is published so that a packet never sees half of it: backends
first, then the Maglev table or the random-selection slots, the reverse-NAT
entry, and the frontend entry (slot 0) last; what the new version no longer
needs (extra slots, old backends, an old frontend) is removed only after.
Every map write is atomic on its own, so at any instant the datapath sees
either the old or the new service. Bulk updates use batch map writes.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import reduce
from operator import attrgetter
from typing import Any

from porin.daemon import maglev
from porin.daemon.service_maps import (
    BackendRecord,
    FrontendSlot,
    LbMaps,
    Plan,
    ReverseNatRecord,
    ServiceRecord,
    address_of,
)
from porin.daemon.store import ServiceStore
from porin.errors import PorinError
from porin.maps.lb_services import SVC_F_AFFINITY, SVC_F_MAGLEV, SVC_F_XDP
from porin.models import (
    MAX_SERVICE_ID,
    Algorithm,
    Backend,
    Service,
    ServiceType,
    TrafficPolicy,
    ValidationError,
)

log = logging.getLogger("porin.services")

MAX_SLOTS = 65535
FIRST_EXTRA_REV_NAT = MAX_SERVICE_ID + 1
ANY_ADDRESS = "0.0.0.0"  # a host port without hostIP
LOOPBACK = "127.0.0.1"
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class ServiceNotFound(PorinError, LookupError):
    http_status = 404
    cni_code = None


class ServiceConflict(PorinError, RuntimeError):
    http_status = 409
    cni_code = None


@dataclass
class Frontend:
    """One address a service answers on, as programmed."""

    ip: str
    port: int
    rev_nat: int
    slots: int = 0
    maglev: bool = False
    backends: list[str] = field(default_factory=list)  # "ip:port" it balances over


@dataclass
class Programmed:
    """What the maps hold for one service."""

    service: Service
    backend_ids: dict[str, int] = field(default_factory=dict)  # "ip:port" -> id
    frontends: list[Frontend] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)  # as saved (daemon/store.py)


@dataclass
class NodeContext:
    """What the services need to know about the node."""

    node_ips: list[str] = field(default_factory=list)
    node_port_range: tuple[int, int] = (30000, 32767)
    is_local: Callable[[str], bool] = lambda ip: True
    xdp_node_ports: bool = False  # XDP on the uplinks: node ports marked SVC_F_XDP


class ServiceManager:
    def __init__(self, maps: LbMaps, state_dir: str, node: NodeContext | None = None) -> None:
        self.maps = maps
        self.node = node or NodeContext()
        self.store = ServiceStore(state_dir)
        self._lock = threading.RLock()
        self._svcs: dict[int, Programmed] = {}
        self._next_backend_id = 1
        # indexes kept in step with _svcs, so one change costs what it changes
        self._frontend_owner: dict[tuple[str, int, str], int] = {}  # (ip, port, proto) -> id
        self._used_slots: set[int] = set()  # lb4_backends slots of live backend ids

    # ---------- queries ----------

    def list(self) -> list[Service]:
        with self._lock:
            return [p.service for _, p in sorted(self._svcs.items())]

    def census(self) -> tuple[dict[str, int], int]:
        """(services by type, backends of all of them), cheaply, for metrics."""
        with self._lock:
            svcs = [p.service for p in self._svcs.values()]
        by_type: dict[str, int] = {}
        for t in map(attrgetter("type"), svcs):
            by_type[t] = by_type.get(t, 0) + 1
        return {str(t): n for t, n in by_type.items()}, sum(len(s.backends) for s in svcs)

    def get(self, sid: int) -> Service:
        with self._lock:
            p = self._svcs.get(sid)
        if p is None:
            raise ServiceNotFound(f"service {sid} not found")
        return p.service

    def backend_ids(self, sid: int) -> dict[str, int]:
        with self._lock:
            return dict(self._svcs[sid].backend_ids)

    def frontends(self, sid: int) -> list[Frontend]:
        with self._lock:
            return list(self._svcs[sid].frontends)

    # ---------- changes ----------

    def upsert(self, svc: Service) -> Service:
        return self.upsert_many([svc])[0]

    def upsert_many(self, svcs: list[Service]) -> list[Service]:
        with self._lock:
            self._assign_ids(svcs)
            self._assign_node_ports(svcs)
            self._check_conflicts(svcs)
            plan = Plan(used_backend_slots=set(self._used_slots))
            extra_ids = self._extra_rev_nat_pool(svcs)
            progs = [self._plan_one(svc, plan, extra_ids) for svc in svcs]
            self._apply(plan)
            slot_of = self.maps.backends.slot_of
            self._used_slots = plan.used_backend_slots - {slot_of(b) for b in plan.stale_backends}
            for p in progs:
                self._forget_frontend(p.service.id)
                self._svcs[p.service.id] = p
                self._frontend_owner[_frontend_key(p.service)] = p.service.id
            self._save(progs)
            if len(svcs) == 1:
                log.info("%s", _programmed(svcs[0]))
            else:
                if log.isEnabledFor(logging.DEBUG):
                    for svc in svcs:
                        log.debug("%s", _programmed(svc))
                log.info(
                    "%d services programmed (%d backends)",
                    len(svcs),
                    sum(len(s.backends) for s in svcs),
                )
            return svcs

    def delete(self, sid: int) -> Service:
        return self.delete_many([sid])[0]

    def check_not_host_port(self, sid: int) -> None:
        """Refuse a change from the API or the cluster to a pod's host port."""
        with self._lock:
            p = self._svcs.get(sid)
        if p is not None and p.service.type == ServiceType.HOST_PORT:
            raise ServiceConflict(
                f"service {sid} is a host port of endpoint {p.service.endpoint}: "
                "it goes with the pod"
            )

    def delete_many(self, sids: list[int]) -> list[Service]:
        """Delete services in one plan and one save; all of them or, when one
        is unknown, none."""
        with self._lock:
            missing = [sid for sid in sids if sid not in self._svcs]
            if missing:
                raise ServiceNotFound(f"service {missing[0]} not found")
            gone = [self._svcs[sid] for sid in dict.fromkeys(sids)]
            plan = Plan()
            for p in gone:
                for fe in p.frontends:
                    self._plan_frontend_removal(p.service, fe, plan)
                plan.stale_backends += list(p.backend_ids.values())
            self._apply(plan)
            self.maps.affinity.forget_services({fe.rev_nat for p in gone for fe in p.frontends})
            slot_of = self.maps.backends.slot_of
            self._used_slots -= {slot_of(b) for b in plan.stale_backends}
            for p in gone:
                self._forget_frontend(p.service.id)
                del self._svcs[p.service.id]
            self._save([], [p.service.id for p in gone])
            if len(gone) == 1:
                svc = gone[0].service
                log.info("service %d %s/%s deleted", svc.id, svc.frontend, svc.protocol)
            else:
                log.info("%d services deleted", len(gone))
            return [p.service for p in gone]

    def replace_source(self, source: str, svcs: list[Service]) -> tuple[int, int]:
        """Make the services of `source` exactly `svcs` (a reloaded file):
        (programmed, deleted)."""
        with self._lock:
            by_frontend = {
                (p.service.ip, p.service.port, p.service.protocol): p.service
                for p in self._svcs.values()
            }
            for s in svcs:
                s.source = source
                existing = by_frontend.get((s.ip, s.port, s.protocol))
                if s.id == 0 and existing is not None and existing.source == source:
                    s.id = existing.id
            kept = self.upsert_many(svcs) if svcs else []
            keep_ids = {s.id for s in kept}
            gone = [
                sid
                for sid, p in self._svcs.items()
                if p.service.source == source and sid not in keep_ids
            ]
            for sid in gone:
                self.delete(sid)
            return len(kept), len(gone)

    def local_endpoint_changed(self, ip: str) -> None:
        """A local endpoint at `ip` came or went: re-plan the node ports of
        externalTrafficPolicy local that balance over it (they reach this
        node's own backends only)."""
        with self._lock:
            affected = [
                p.service
                for p in self._svcs.values()
                if p.service.type == ServiceType.NODE_PORT
                and p.service.external_traffic_policy == TrafficPolicy.LOCAL
                and any(b.ip == ip for b in p.service.backends)
            ]
            if affected:
                self.upsert_many(affected)

    # ---------- planning ----------

    def _assign_ids(self, svcs: list[Service]) -> None:
        """Give services without an id the id of the service that owns their
        frontend, or the lowest free one (one pass, indexed: batches are large)."""
        used = set(self._svcs) | {s.id for s in svcs if s.id}
        by_frontend = self._frontend_owner
        claimed = {s.id for s in svcs if s.id}
        nxt = 1
        top = MAX_SERVICE_ID  # host ports take ids from the top: clear of the cluster's
        for s in svcs:
            if s.id:
                continue
            if s.type == ServiceType.HOST_PORT:
                while top in used:
                    top -= 1
                if top < 1:
                    raise ServiceConflict(f"no free service id ({MAX_SERVICE_ID} services)")
                s.id = top
                used.add(top)
                claimed.add(top)
                continue
            owner = by_frontend.get((s.ip, s.port, s.protocol))
            if owner is not None and owner not in claimed:
                s.id = owner
                claimed.add(owner)
                continue
            while nxt in used:
                nxt += 1
            if nxt > MAX_SERVICE_ID:
                raise ServiceConflict(f"no free service id ({MAX_SERVICE_ID} services)")
            s.id = nxt
            used.add(nxt)
            claimed.add(nxt)

    def _assign_node_ports(self, svcs: list[Service]) -> None:
        lo, hi = self.node.node_port_range
        for s in svcs:
            if s.type != ServiceType.NODE_PORT:
                s.node_port = 0
        if not any(s.type == ServiceType.NODE_PORT for s in svcs):
            return
        ids = {s.id for s in svcs}
        taken = {
            (p.service.protocol, p.service.node_port)
            for p in self._svcs.values()
            if p.service.type == ServiceType.NODE_PORT and p.service.id not in ids
        }
        host_ports = {
            (p.service.protocol, p.service.port): p.service
            for p in self._svcs.values()
            if p.service.type == ServiceType.HOST_PORT and p.service.id not in ids
        }
        taken |= set(host_ports)
        for s in svcs:
            if s.type != ServiceType.NODE_PORT:
                s.node_port = 0
                continue
            if not s.node_port:
                old = self._svcs.get(s.id)
                if old is not None and old.service.node_port:
                    s.node_port = old.service.node_port
            if s.node_port:
                if not lo <= s.node_port <= hi:
                    raise ValidationError("nodePort", f"{s.node_port} is outside {lo}-{hi}")
                if (s.protocol, s.node_port) in host_ports:
                    owner = host_ports[(s.protocol, s.node_port)]
                    raise ServiceConflict(
                        f"node port {s.node_port}/{s.protocol} is a host port of endpoint "
                        f"{owner.endpoint}"
                    )
                if (s.protocol, s.node_port) in taken:
                    raise ServiceConflict(f"node port {s.node_port}/{s.protocol} is in use")
            else:
                free = next((n for n in range(lo, hi + 1) if (s.protocol, n) not in taken), None)
                if free is None:
                    raise ServiceConflict(f"no free node port in {lo}-{hi}")
                s.node_port = free
            taken.add((s.protocol, s.node_port))

    def _check_host_ports(self, svcs: list[Service]) -> None:
        """A host port takes its port on its addresses: no node port and no
        other host port may have it there."""
        mine = [s for s in svcs if s.type == ServiceType.HOST_PORT]
        if not mine:
            return
        ids = {s.id for s in svcs}
        others = [p.service for p in self._svcs.values() if p.service.id not in ids]
        for s in mine:
            if s.ip != ANY_ADDRESS and s.ip != LOOPBACK and s.ip not in self.node.node_ips:
                raise ValidationError("hostIP", f"{s.ip} is not an address of this node")
            addrs = set(self.host_port_addresses(s))
            for o in others + [x for x in mine if x is not s and x.id < s.id]:
                if o.protocol != s.protocol:
                    continue
                if o.type == ServiceType.NODE_PORT and o.node_port == s.port:
                    raise ServiceConflict(
                        f"host port {s.port}/{s.protocol} is node port of service {o.id}"
                    )
                if (
                    o.type == ServiceType.HOST_PORT
                    and o.port == s.port
                    and addrs & set(self.host_port_addresses(o))
                ):
                    raise ServiceConflict(
                        f"host port {s.port}/{s.protocol} is already taken by endpoint {o.endpoint}"
                    )

    def _check_conflicts(self, svcs: list[Service]) -> None:
        for s in svcs:
            old = self._svcs.get(s.id)
            if old is not None and (old.service.type == ServiceType.HOST_PORT) != (
                s.type == ServiceType.HOST_PORT
            ):
                raise ServiceConflict(
                    f"service {s.id} is a host port of endpoint {old.service.endpoint}: "
                    "it goes with the pod"
                    if old.service.type == ServiceType.HOST_PORT
                    else f"service {s.id} is not a host port"
                )
        self._check_host_ports(svcs)
        ids = {s.id for s in svcs}
        seen: dict[tuple[str, int, str], int] = {}
        for s in svcs:
            key = (s.ip, s.port, s.protocol)
            other = seen.get(key)
            if other is None:
                owner = self._frontend_owner.get(key)
                # a service of this batch may move away from the frontend
                other = owner if owner not in ids else None
            if other is not None and other != s.id:
                raise ServiceConflict(
                    f"frontend {s.frontend}/{s.protocol} already belongs to service {other}"
                )
            seen[key] = s.id

    def _extra_rev_nat_pool(self, svcs: list[Service]) -> list[int]:
        """Free reverse-NAT ids for NodePort frontends, lowest first."""
        need = sum(len(self.node.node_ips) for s in svcs if s.type == ServiceType.NODE_PORT)
        need += sum(
            len(self.host_port_addresses(s)) for s in svcs if s.type == ServiceType.HOST_PORT
        )
        if not need:
            return []
        ids = {s.id for s in svcs}
        used = {
            fe.rev_nat for p in self._svcs.values() if p.service.id not in ids for fe in p.frontends
        }
        pool = []
        n = FIRST_EXTRA_REV_NAT
        while len(pool) < need and n <= 65535:
            if n not in used:
                pool.append(n)
            n += 1
        if len(pool) < need:
            raise ServiceConflict("no free reverse-NAT id for a NodePort frontend")
        return pool

    def _wanted_frontends(
        self, svc: Service, pool: list[int], old: Programmed | None
    ) -> list[Frontend]:
        all_backends = [b.address for b in svc.active_backends]
        if svc.type == ServiceType.HOST_PORT:
            return self._host_port_frontends(svc, pool, old, all_backends)
        fes = [Frontend(svc.ip, svc.port, svc.id, backends=all_backends)]
        if svc.type == ServiceType.NODE_PORT:
            # A node port reaches backends on every node (on another node: with
            # SNAT through the overlay, bpf_host.c, or DSR from XDP, bpf_xdp.c);
            # externalTrafficPolicy local keeps to this node's own, the client's
            # address kept, and a node without any refuses at once (ICMP port
            # unreachable).
            local = (
                [b.address for b in svc.active_backends if self.node.is_local(b.ip)]
                if svc.external_traffic_policy == TrafficPolicy.LOCAL
                else all_backends
            )
            rids = _frontend_ids(self.node.node_ips, svc.node_port, old, pool)
            for ip in self.node.node_ips:
                fes.append(Frontend(ip, svc.node_port, rids[ip], backends=local))
        return fes

    def host_port_addresses(self, svc: Service) -> list[str]:
        """The addresses a host port answers on: its hostIP, or every node
        address and the loopback (served by the socket hooks, daemon/sock.py)."""
        if svc.ip != ANY_ADDRESS:
            return [svc.ip]
        return [*self.node.node_ips, LOOPBACK]

    def _host_port_frontends(
        self, svc: Service, pool: list[int], old: Programmed | None, backends: list[str]
    ) -> list[Frontend]:
        addrs = self.host_port_addresses(svc)
        rids = _frontend_ids(addrs, svc.port, old, pool)
        return [Frontend(ip, svc.port, rids[ip], backends=backends) for ip in addrs]

    def _plan_one(self, svc: Service, plan: Plan, pool: list[int]) -> Programmed:
        old = self._svcs.get(svc.id)
        proto = PROTO[svc.protocol]
        prog = Programmed(service=svc)
        for b in svc.backends:
            bid = old.backend_ids.get(b.address) if old else None
            if bid is None:
                bid = self._new_backend_id(plan)
            prog.backend_ids[b.address] = bid
            plan.backends.append(BackendRecord(bid, address_of(b.ip), b.port, proto, b.state))

        by_addr = {b.address: b for b in svc.backends}
        old_fes = {(f.ip, f.port): f for f in old.frontends} if old else {}
        oproto = PROTO[old.service.protocol] if old else proto
        for fe in self._wanted_frontends(svc, pool, old):
            prev = old_fes.pop((fe.ip, fe.port), None)
            if prev is not None and oproto != proto:
                self._plan_frontend_removal(old.service, prev, plan)
                prev = None
            active = [by_addr[a] for a in fe.backends]
            flags = SVC_F_AFFINITY if svc.affinity_timeout else 0
            if (
                self.node.xdp_node_ports
                and svc.type == ServiceType.NODE_PORT
                and fe.ip in self.node.node_ips
            ):
                flags |= SVC_F_XDP
            if svc.algorithm == Algorithm.MAGLEV:
                flags |= SVC_F_MAGLEV
                fe.maglev = True
                plan.maglev.append((fe.rev_nat, self._maglev_ids(fe, prog, old, prev, active)))
            elif prev is not None and prev.maglev:
                plan.stale_maglev.append(prev.rev_nat)
            slot_ids = _weighted_slots(active, prog.backend_ids)
            fe.slots = len(slot_ids)
            for i, bid in enumerate(slot_ids, start=1):
                plan.slots.append((_slot(fe, proto, i), bid))
            plan.reverse_nat.append(ReverseNatRecord(fe.rev_nat, address_of(fe.ip), fe.port))
            plan.masters.append(
                (
                    _slot(fe, proto, 0),
                    ServiceRecord(len(slot_ids), fe.rev_nat, flags, svc.affinity_timeout),
                )
            )
            if prev is not None:
                for i in range(fe.slots + 1, prev.slots + 1):
                    plan.stale_slots.append(_slot(fe, proto, i))
                if prev.rev_nat != fe.rev_nat:
                    plan.stale_rev_nat.append(prev.rev_nat)
            prog.frontends.append(fe)
        for gone in old_fes.values():
            self._plan_frontend_removal(old.service, gone, plan)
        if old is not None:
            live = set(prog.backend_ids.values())
            plan.stale_backends += [b for b in old.backend_ids.values() if b not in live]
        return prog

    def _forget_frontend(self, sid: int) -> None:
        old = self._svcs.get(sid)
        if old is not None and self._frontend_owner.get(_frontend_key(old.service)) == sid:
            del self._frontend_owner[_frontend_key(old.service)]

    def _reindex(self) -> None:
        slot_of = self.maps.backends.slot_of
        self._frontend_owner = {_frontend_key(p.service): sid for sid, p in self._svcs.items()}
        self._used_slots = {slot_of(b) for p in self._svcs.values() for b in p.backend_ids.values()}

    def _new_backend_id(self, plan: Plan) -> int:
        """The next id whose lb4_backends slot is free: ids grow and are not
        reused while 32 bits last, so conntrack never finds a stale id again."""
        m = self.maps.backends
        for _ in range(m.max_entries):
            bid = self._next_backend_id
            self._next_backend_id = bid + 1 if bid < 0xFFFFFFFF else 1
            slot = m.slot_of(bid)
            if bid and slot not in plan.used_backend_slots:
                plan.used_backend_slots.add(slot)
                return bid
        raise ServiceConflict(f"no free backend slot ({m.max_entries} backends programmed)")

    def _maglev_ids(
        self,
        fe: Frontend,
        prog: Programmed,
        old: Programmed | None,
        prev: Frontend | None,
        active: list[Backend],
    ) -> list[int]:
        m = self.maps.maglev.table_size
        previous = None
        if old is not None and prev is not None and prev.maglev:
            current = self.maps.maglev.get(prev.rev_nat)
            if current is not None:
                by_id = {bid: addr for addr, bid in old.backend_ids.items()}
                previous = [by_id.get(x) for x in current]
        table = maglev.build_table({b.address: b.weight for b in active}, m, previous)
        return [prog.backend_ids[a] if a else 0 for a in table]

    def _plan_frontend_removal(self, svc: Service, fe: Frontend, plan: Plan) -> None:
        proto = PROTO[svc.protocol]
        for i in range(fe.slots + 1):
            plan.stale_slots.append(_slot(fe, proto, i))
        if fe.maglev:
            plan.stale_maglev.append(fe.rev_nat)
        plan.stale_rev_nat.append(fe.rev_nat)

    def _apply(self, plan: Plan) -> None:
        self.maps.publish(plan)

    # ---------- persistence ----------

    def _save(self, changed: list[Programmed], removed: list[int] | None = None) -> None:
        for p in changed:
            p.record = {
                **p.service.to_json(),
                "backendIds": p.backend_ids,
                "frontends": [asdict(f) for f in p.frontends],
            }
        self.store.save(
            [p.record for p in changed],
            removed or [],
            self._next_backend_id,
            len(self._svcs),
            lambda: [p.record for _, p in sorted(self._svcs.items())],
        )

    def restore(self) -> None:
        """Reload saved services and make the maps match them (no flush)."""
        next_backend_id, saved = self.store.load()
        with self._lock:
            self._next_backend_id = next_backend_id
            for raw in saved:
                try:
                    svc = Service.from_json(
                        {k: v for k, v in raw.items() if k not in ("backendIds", "frontends")}
                    )
                    fes = [Frontend(**f) for f in raw.get("frontends", [])]
                except (ValidationError, TypeError) as e:
                    log.error("skipping unreadable saved service %s: %s", raw.get("id"), e)
                    continue
                self._svcs[svc.id] = Programmed(
                    service=svc, backend_ids=dict(raw.get("backendIds", {})), frontends=fes
                )
            self._drop_backend_slot_collisions()
            self._reindex()
            if self._svcs:
                self.upsert_many([p.service for p in self._svcs.values()])
            self._sweep()

    def _drop_backend_slot_collisions(self) -> None:
        """Ids saved by older builds (a hash of backends) may share an
        lb4_backends slot: such a backend is given a new id."""
        taken: set[int] = set()
        slot_of = self.maps.backends.slot_of
        for p in self._svcs.values():
            for addr, bid in list(p.backend_ids.items()):
                if slot_of(bid) in taken:
                    log.info(
                        "service %d backend %s: new id (slot of id %d taken)",
                        p.service.id,
                        addr,
                        bid,
                    )
                    del p.backend_ids[addr]
                else:
                    taken.add(slot_of(bid))

    def _sweep(self) -> None:
        """Drop map entries no saved service owns (left by a crash mid-change):
        frontends and slots, backends, reverse NAT, Maglev tables, affinity."""
        slots: set[FrontendSlot] = set()
        backends: set[int] = set()
        rev_nats: set[int] = set()
        maglevs: set[int] = set()
        for p in self._svcs.values():
            proto = PROTO[p.service.protocol]
            for fe in p.frontends:
                rev_nats.add(fe.rev_nat)
                if fe.maglev:
                    maglevs.add(fe.rev_nat)
                slots |= {_slot(fe, proto, i) for i in range(fe.slots + 1)}
            backends |= set(p.backend_ids.values())
        self.maps.sweep(slots, backends, rev_nats, maglevs)


def _programmed(svc: Service) -> str:
    return (
        f"service {svc.id} {svc.frontend}/{svc.protocol} {svc.type} programmed: "
        f"{len(svc.active_backends)} active of {len(svc.backends)} backends, {svc.algorithm}"
    )


def _slot(fe: Frontend, proto: int, slot: int) -> FrontendSlot:
    return FrontendSlot(address_of(fe.ip), fe.port, proto, slot)


def _frontend_ids(
    addrs: list[str], port: int, old: Programmed | None, pool: list[int]
) -> dict[str, int]:
    """Reverse-NAT ids for the frontends of one service on `addrs`:port. A
    frontend it had keeps its id (all of those are taken out of `pool` before
    a new one is handed out, so an address new to the list can never be given
    an id another frontend of the service still holds); new ones come from
    `pool`."""
    previous = {(f.ip, f.port): f.rev_nat for f in (old.frontends if old else [])}
    out: dict[str, int] = {}
    for ip in addrs:
        rid = previous.get((ip, port))
        if rid is not None:
            out[ip] = rid
            if rid in pool:
                pool.remove(rid)
    for ip in addrs:
        if ip not in out:
            out[ip] = pool.pop(0)
    return out


def _frontend_key(svc: Service) -> tuple[str, int, str]:
    return (svc.ip, svc.port, svc.protocol)


def _weighted_slots(active: list[Backend], ids: dict[str, int]) -> list[int]:
    """Backend id per random-selection slot: each backend weight/gcd times."""
    if not active:
        return []
    g = reduce(math.gcd, (b.weight for b in active))
    slots = [ids[b.address] for b in active for _ in range(b.weight // g)]
    return slots[:MAX_SLOTS]
