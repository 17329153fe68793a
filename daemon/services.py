"""Services: the agent's source of truth, programmed into the lb4_* maps.

A service is published so that a packet never sees half of it: backends
first, then the Maglev table or the random-selection slots, the reverse-NAT
entry, and the service entry (slot 0) last; what the new version no longer
needs (extra slots, old backends, an old frontend) is removed only after.
Every map write is atomic on its own, so at any instant the datapath sees
either the old or the new service. Bulk updates use batch map writes.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from dataclasses import dataclass, field
from functools import reduce

from porin.daemon import maglev
from porin.daemon.store import read_json, write_json_atomic
from porin.maps.lb_affinity import AffinityMap
from porin.maps.lb_backends import BackendId, BackendsMap, Lb4Backend
from porin.maps.lb_maglev import MaglevMap
from porin.maps.lb_reverse_nat import Lb4ReverseNat, ReverseNatMap, RevNatId
from porin.maps.lb_services import SVC_F_AFFINITY, SVC_F_MAGLEV, Lb4Key, Lb4Service, ServicesMap
from porin.models import Backend, Service, ValidationError

log = logging.getLogger("porin.services")

MAX_SERVICE_ID = 65535
MAX_SLOTS = 65535
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class ServiceNotFound(LookupError):
    pass


class ServiceConflict(RuntimeError):
    pass


@dataclass
class LbMaps:
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


@dataclass
class Programmed:
    """What the maps hold for one service: its backend ids and slot count."""

    service: Service
    backend_ids: dict[str, int] = field(default_factory=dict)  # "ip:port" -> id
    slots: int = 0


@dataclass
class Plan:
    """Map writes for a batch of services, in publication order."""

    backends: list[tuple[BackendId, Lb4Backend]] = field(default_factory=list)
    maglev: list[tuple[int, list[int]]] = field(default_factory=list)
    slots: list[tuple[Lb4Key, Lb4Service]] = field(default_factory=list)
    reverse_nat: list[tuple[RevNatId, Lb4ReverseNat]] = field(default_factory=list)
    masters: list[tuple[Lb4Key, Lb4Service]] = field(default_factory=list)
    stale_slots: list[Lb4Key] = field(default_factory=list)
    stale_backends: list[BackendId] = field(default_factory=list)
    stale_maglev: list[int] = field(default_factory=list)


class ServiceManager:
    def __init__(self, maps: LbMaps, state_dir: str) -> None:
        self.maps = maps
        self.path = os.path.join(state_dir, "services.json")
        self._lock = threading.RLock()
        self._svcs: dict[int, Programmed] = {}
        self._next_backend_id = 1

    # ---------- queries ----------

    def list(self) -> list[Service]:
        with self._lock:
            return [p.service for _, p in sorted(self._svcs.items())]

    def get(self, sid: int) -> Service:
        with self._lock:
            p = self._svcs.get(sid)
        if p is None:
            raise ServiceNotFound(f"service {sid} not found")
        return p.service

    def backend_ids(self, sid: int) -> dict[str, int]:
        with self._lock:
            return dict(self._svcs[sid].backend_ids)

    # ---------- changes ----------

    def upsert(self, svc: Service) -> Service:
        return self.upsert_many([svc])[0]

    def upsert_many(self, svcs: list[Service]) -> list[Service]:
        with self._lock:
            self._assign_ids(svcs)
            self._check_conflicts(svcs)
            plan = Plan()
            progs = [self._plan_one(svc, plan) for svc in svcs]
            self._apply(plan)
            for p in progs:
                self._svcs[p.service.id] = p
            self._save()
            for svc in svcs:
                log.info(
                    "service %d %s/%s programmed: %d active of %d backends, %s",
                    svc.id,
                    svc.frontend,
                    svc.protocol,
                    len(svc.active_backends),
                    len(svc.backends),
                    svc.algorithm,
                )
            return svcs

    def delete(self, sid: int) -> Service:
        with self._lock:
            p = self._svcs.get(sid)
            if p is None:
                raise ServiceNotFound(f"service {sid} not found")
            plan = Plan()
            self._plan_removal(p, plan)
            self._apply(plan)
            self.maps.reverse_nat.delete(RevNatId(sid))
            self.maps.affinity.forget_service(sid)
            del self._svcs[sid]
            self._save()
            log.info("service %d %s/%s deleted", sid, p.service.frontend, p.service.protocol)
            return p.service

    def replace_source(self, source: str, svcs: list[Service]) -> tuple[int, int]:
        """Make the services of `source` exactly `svcs` (a reloaded file):
        (programmed, deleted)."""
        with self._lock:
            for s in svcs:
                s.source = source
                existing = self._find_frontend(s)
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

    # ---------- planning ----------

    def _find_frontend(self, svc: Service) -> Service | None:
        for p in self._svcs.values():
            s = p.service
            if (s.ip, s.port, s.protocol) == (svc.ip, svc.port, svc.protocol):
                return s
        return None

    def _assign_ids(self, svcs: list[Service]) -> None:
        used = set(self._svcs) | {s.id for s in svcs if s.id}
        nxt = 1
        for s in svcs:
            if s.id:
                continue
            existing = self._find_frontend(s)
            if existing is not None and existing.id not in {x.id for x in svcs if x is not s}:
                s.id = existing.id
                continue
            while nxt in used:
                nxt += 1
            if nxt > MAX_SERVICE_ID:
                raise ServiceConflict("no free service id (65535 services)")
            s.id = nxt
            used.add(nxt)

    def _check_conflicts(self, svcs: list[Service]) -> None:
        frontends: dict[tuple[str, int, str], int] = {}
        for p in self._svcs.values():
            s = p.service
            frontends[(s.ip, s.port, s.protocol)] = s.id
        ids = {s.id for s in svcs}
        for k in [k for k, v in frontends.items() if v in ids]:
            del frontends[k]
        for s in svcs:
            key = (s.ip, s.port, s.protocol)
            other = frontends.get(key)
            if other is not None and other != s.id:
                raise ServiceConflict(
                    f"frontend {s.frontend}/{s.protocol} already belongs to service {other}"
                )
            frontends[key] = s.id

    def _plan_one(self, svc: Service, plan: Plan) -> Programmed:
        old = self._svcs.get(svc.id)
        proto = PROTO[svc.protocol]
        prog = Programmed(service=svc)
        for b in svc.backends:
            bid = old.backend_ids.get(b.address) if old else None
            if bid is None:
                bid = self._next_backend_id
                self._next_backend_id += 1
            prog.backend_ids[b.address] = bid
            plan.backends.append((BackendId(bid), Lb4Backend.of(b.ip, b.port, proto, b.state)))

        active = svc.active_backends
        flags = 0
        if svc.algorithm == "maglev":
            flags |= SVC_F_MAGLEV
            plan.maglev.append((svc.id, self._maglev_ids(svc, prog, old, active)))
        elif old is not None and old.service.algorithm == "maglev":
            plan.stale_maglev.append(svc.id)
        if svc.affinity_timeout:
            flags |= SVC_F_AFFINITY

        slot_ids = _weighted_slots(active, prog.backend_ids)
        prog.slots = len(slot_ids)
        for i, bid in enumerate(slot_ids, start=1):
            plan.slots.append((Lb4Key.of(svc.ip, svc.port, proto, i), Lb4Service(backend_id=bid)))
        plan.reverse_nat.append((RevNatId(svc.id), Lb4ReverseNat.of(svc.ip, svc.port)))
        plan.masters.append(
            (
                Lb4Key.of(svc.ip, svc.port, proto, 0),
                Lb4Service(
                    count=len(slot_ids) if active else 0,
                    rev_nat=svc.id,
                    flags=flags,
                    affinity_timeout=svc.affinity_timeout,
                ),
            )
        )
        if old is not None:
            same_frontend = (old.service.ip, old.service.port, old.service.protocol) == (
                svc.ip,
                svc.port,
                svc.protocol,
            )
            if same_frontend:
                oproto = PROTO[old.service.protocol]
                for i in range(prog.slots + 1, old.slots + 1):
                    plan.stale_slots.append(Lb4Key.of(svc.ip, svc.port, oproto, i))
            else:
                self._plan_frontend_removal(old, plan)
            live = set(prog.backend_ids.values())
            plan.stale_backends += [BackendId(b) for b in old.backend_ids.values() if b not in live]
        return prog

    def _maglev_ids(
        self, svc: Service, prog: Programmed, old: Programmed | None, active: list[Backend]
    ) -> list[int]:
        m = self.maps.maglev.table_size
        previous = None
        if old is not None and old.service.algorithm == "maglev":
            current = self.maps.maglev.get(svc.id)
            if current is not None:
                by_id = {bid: addr for addr, bid in old.backend_ids.items()}
                previous = [by_id.get(x) for x in current]
        table = maglev.build_table({b.address: b.weight for b in active}, m, previous)
        return [prog.backend_ids[a] if a else 0 for a in table]

    def _plan_frontend_removal(self, p: Programmed, plan: Plan) -> None:
        s = p.service
        proto = PROTO[s.protocol]
        plan.stale_slots.append(Lb4Key.of(s.ip, s.port, proto, 0))
        for i in range(1, p.slots + 1):
            plan.stale_slots.append(Lb4Key.of(s.ip, s.port, proto, i))

    def _plan_removal(self, p: Programmed, plan: Plan) -> None:
        self._plan_frontend_removal(p, plan)
        plan.stale_backends += [BackendId(b) for b in p.backend_ids.values()]
        if p.service.algorithm == "maglev":
            plan.stale_maglev.append(p.service.id)

    def _apply(self, plan: Plan) -> None:
        m = self.maps
        m.backends.put_many(plan.backends)
        for sid, table in plan.maglev:
            m.maglev.put(sid, table)
        m.services.put_many(plan.slots)
        m.reverse_nat.put_many(plan.reverse_nat)
        m.services.put_many(plan.masters)  # publish: slot 0 last
        # a removed frontend goes with its slot 0 first, so no packet picks a missing slot
        masters = [k for k in plan.stale_slots if k.slot == 0]
        m.services.delete_many(masters)
        m.services.delete_many([k for k in plan.stale_slots if k.slot != 0])
        m.backends.delete_many(plan.stale_backends)
        for sid in plan.stale_maglev:
            m.maglev.delete(sid)

    # ---------- persistence ----------

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "nextBackendId": self._next_backend_id,
                "services": [
                    {**p.service.to_json(), "backendIds": p.backend_ids, "slots": p.slots}
                    for _, p in sorted(self._svcs.items())
                ],
            },
        )

    def restore(self) -> None:
        """Reload saved services and make the maps match them (no flush)."""
        data = read_json(self.path, default={}) or {}
        with self._lock:
            self._next_backend_id = int(data.get("nextBackendId", 1))
            for raw in data.get("services", []):
                try:
                    svc = Service.from_json(
                        {k: v for k, v in raw.items() if k not in ("backendIds", "slots")}
                    )
                except ValidationError as e:
                    log.error("skipping unreadable saved service %s: %s", raw.get("id"), e)
                    continue
                self._svcs[svc.id] = Programmed(
                    service=svc,
                    backend_ids=dict(raw.get("backendIds", {})),
                    slots=raw.get("slots", 0),
                )
            if self._svcs:
                self.upsert_many([p.service for p in self._svcs.values()])
            self._sweep()

    def _sweep(self) -> None:
        """Drop map entries no saved service owns (left by a crash mid-change)."""
        want_keys = set()
        want_backends = set()
        for p in self._svcs.values():
            s = p.service
            proto = PROTO[s.protocol]
            for i in range(p.slots + 1):
                want_keys.add(bytes(Lb4Key.of(s.ip, s.port, proto, i)))
            want_backends |= set(p.backend_ids.values())
        m = self.maps
        m.services.delete_many([k for k in m.services.keys() if bytes(k) not in want_keys])
        m.backends.delete_many([k for k in m.backends.keys() if k.id not in want_backends])
        m.reverse_nat.delete_many([k for k in m.reverse_nat.keys() if k.id not in self._svcs])


def _weighted_slots(active: list[Backend], ids: dict[str, int]) -> list[int]:
    """Backend id per random-selection slot: each backend weight/gcd times."""
    if not active:
        return []
    g = reduce(math.gcd, (b.weight for b in active))
    slots = [ids[b.address] for b in active for _ in range(b.weight // g)]
    return slots[:MAX_SLOTS]
