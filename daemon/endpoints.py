"""Endpoint lifecycle: CNI ADD/DEL/CHECK/GC and restore after a restart.

Every ADD is recorded (state "creating") before anything is created, so an
agent that dies half-way finds the record on its next start and undoes the
half-made endpoint. Every failure path rolls back what was made, in reverse.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyroute2 import IPRoute

from porin.daemon import links
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import LxcDatapath
from porin.daemon.events import EndpointAdded, EndpointRelabeled, EndpointRemoved, EventBus
from porin.daemon.identities import canonical_labels
from porin.daemon.ipam import Ipam
from porin.daemon.kvstore import KvStoreError
from porin.daemon.netns import NetnsError
from porin.daemon.selectors import identity_labels
from porin.daemon.store import EndpointStore
from porin.errors import CONTAINER_UNKNOWN, PORIN_CONFLICT, TRY_AGAIN, PorinError
from porin.maps.endpoints import EndpointEntry, EndpointsMap
from porin.models import Endpoint, EndpointRequest, EndpointState, IpamKind

if TYPE_CHECKING:
    from porin.daemon.hostports import HostPorts

log = logging.getLogger("porin.endpoints")

MAX_ENDPOINT_ID = 65535


class LinkReaper:
    """Deletes endpoint veths in the background, one netlink socket of its own."""

    def __init__(self, store: EndpointStore) -> None:
        self.store = store
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="link-reaper", daemon=True).start()

    def delete(self, name: str) -> None:
        with self._cond:
            self._pending.add(name)
        self._queue.put(name)

    def pending(self, name: str) -> bool:
        with self._cond:
            return name in self._pending

    def wait(self, name: str, timeout: float = 10.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: name not in self._pending, timeout)

    def idle(self, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def _run(self) -> None:
        ipr = IPRoute()
        while True:
            name = self._queue.get()
            try:
                links.delete_link(ipr, name)
                self.store.deleted(name)
            except Exception as e:
                log.error("cannot delete veth %s: %s (retried on the next start)", name, e)
            with self._cond:
                self._pending.discard(name)
                self._cond.notify_all()


class EndpointNotFound(PorinError, LookupError):
    http_status = 404
    cni_code = CONTAINER_UNKNOWN


class EndpointConflict(PorinError, RuntimeError):
    http_status = 409
    cni_code = PORIN_CONFLICT


class IdentityUnavailable(PorinError, ConnectionError):
    """A label set no identity is known for yet, with the kvstore away: the
    runtime may retry (CNI code 11), nothing of the pod is left meanwhile."""

    http_status = 503
    cni_code = TRY_AGAIN


def owner_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


class EndpointManager:
    def __init__(
        self,
        cfg: AgentConfig,
        datapath: LxcDatapath,
        ipam: Ipam,
        store: EndpointStore,
        endpoints_map: EndpointsMap,
        events: EventBus | None = None,
    ) -> None:
        self.cfg = cfg
        self.datapath = datapath
        self.ipam = ipam
        self.store = store
        self.map = endpoints_map
        self.ipr = IPRoute()
        self.reaper = LinkReaper(store)
        self._lock = threading.RLock()
        self._eps: dict[int, Endpoint] = {}
        self.events = events or EventBus()
        # the security identity of a set of labels, allocated cluster-wide
        # (a kvstore transaction) while the endpoint is created
        self.identity_for: Callable[[dict[str, str]], int] = lambda labels: 0
        # the policy flags and revision of an endpoint's datapath entry
        # (daemon/policy.py); None: not computed yet, the pinned entry's stand
        self.policy_state: Callable[[Endpoint], tuple[int, int] | None] = lambda ep: None
        # the pods' host ports (daemon/hostports.py); None: not served (unit tests)
        self.host_ports: HostPorts | None = None

    # ---------- queries ----------

    def list(self) -> list[Endpoint]:
        with self._lock:
            return sorted(self._eps.values(), key=lambda e: e.id)

    def get(self, ep_id: int) -> Endpoint:
        with self._lock:
            ep = self._eps.get(ep_id)
        if ep is None:
            raise EndpointNotFound(f"endpoint {ep_id} not found")
        return ep

    def has_ip(self, ip: str) -> bool:
        # no lock: the services ask while holding theirs, and an ADD holds
        # this one while it programs host ports (tuple() copies atomically)
        eps = tuple(self._eps.values())
        return any(ep.ip == ip and ep.state == EndpointState.READY for ep in eps)

    def snapshot(self) -> tuple[Endpoint, ...]:
        """Every endpoint, without waiting for an ADD or DEL in progress (metrics)."""
        return tuple(self._eps.values())  # copied atomically, as in has_ip

    def ready(self) -> list[Endpoint]:
        """The READY endpoints, without waiting for an ADD or DEL in progress:
        for the cluster state, which asks while holding its lock, which an ADD
        takes while holding this one (the new endpoint's policy reads the other
        nodes' named ports). An endpoint is READY before its event goes out,
        so whoever learns of it from the event finds it here."""
        return sorted(
            (e for e in self.snapshot() if e.state == EndpointState.READY), key=lambda e: e.id
        )

    def find(self, container_id: str, ifname: str) -> Endpoint | None:
        with self._lock:
            for ep in self._eps.values():
                if ep.container_id == container_id and ep.ifname == ifname:
                    return ep
        return None

    # ---------- ADD ----------

    def add(self, req: EndpointRequest) -> Endpoint:
        with self._lock:
            existing = self.find(req.container_id, req.ifname)
            if existing is not None and existing.state == EndpointState.READY:
                if existing.netns != req.netns:
                    raise EndpointConflict(
                        f"container {req.container_id} interface {req.ifname} is already "
                        f"attached in netns {existing.netns}"
                    )
                log.info(
                    "ADD %s/%s: already attached as endpoint %d",
                    req.container_id,
                    req.ifname,
                    existing.id,
                )
                return existing
            if existing is not None:
                self._teardown(existing)
            return self._create(req)

    def _create(self, req: EndpointRequest) -> Endpoint:
        undo: list[Callable[[], object]] = []
        owner = owner_key(req.container_id, req.ifname)
        try:
            if req.ipv4 is not None:
                ipv4 = ipaddress.IPv4Interface(f"{req.ipv4.split('/')[0]}/32")
                gateway = req.gateway or self.cfg.gateway
                ipam_kind = IpamKind.PLUGIN
                self._check_address_free(str(ipv4.ip))
            else:
                ip = self.ipam.allocate(owner)
                undo.append(lambda: self.ipam.release(owner))
                ipv4 = ipaddress.IPv4Interface(f"{ip}/32")
                gateway = self.cfg.gateway
                ipam_kind = IpamKind.AGENT
            ep = Endpoint(
                id=self._next_id(),
                container_id=req.container_id,
                ifname=req.ifname,
                netns=req.netns,
                network=req.network,
                ipv4=str(ipv4),
                gateway=gateway,
                mtu=req.mtu or self.cfg.pod_mtu,
                host_ifname=links.lxc_name(req.container_id, req.ifname),
                ipam=ipam_kind,
                labels=req.labels,
                ports=req.ports,
                port_mappings=req.port_mappings,
                created_at=time.time(),
            )
            self._eps[ep.id] = ep
            undo.append(lambda: self._eps.pop(ep.id, None))
            self.store.save(ep.id, ep.to_record())
            undo.append(lambda: self.store.delete(ep.id))

            # a veth still being reaped, or left by a crashed attempt, blocks the name
            self.reaper.wait(ep.host_ifname)
            links.delete_link(self.ipr, ep.host_ifname)
            link = links.create_pod_link(
                self.ipr, ep.host_ifname, ep.netns, ep.ifname, ipv4, gateway, ep.mtu
            )
            undo.append(lambda: links.delete_link(self.ipr, ep.host_ifname))
            ep.host_ifindex, ep.host_mac = link.host_ifindex, link.host_mac
            ep.identity = self._identity(ep.labels)
            ep.pod_ifindex, ep.mac = link.pod_ifindex, link.pod_mac

            self.datapath.attach(self.ipr, ep.host_ifindex)
            links.add_host_route(self.ipr, ep.ip, ep.host_ifindex)
            self.map.upsert(self._map_entry(ep))
            undo.append(lambda: self.map.remove(ep.ip))
            if ep.port_mappings and self.host_ports is not None:
                self.host_ports.claim(ep)
                undo.append(lambda: self.host_ports.release(ep))

            ep.state = EndpointState.READY
            self.store.save(ep.id, ep.to_record())
        except Exception:
            for step in reversed(undo):
                try:
                    step()
                except Exception as e:  # keep undoing: leak nothing
                    log.error("rollback step failed for %s: %s", owner, e)
            raise
        self.events.publish(EndpointAdded(ep))
        log.info(
            "endpoint %d ready: container=%s ifname=%s ip=%s host=%s",
            ep.id,
            ep.container_id,
            ep.ifname,
            ep.ipv4,
            ep.host_ifname,
        )
        return ep

    def _check_address_free(self, ip: str) -> None:
        for other in self._eps.values():
            if other.ip == ip:
                raise EndpointConflict(
                    f"address {ip} is already used by endpoint {other.id} "
                    f"(container {other.container_id})"
                )
        owner = self.ipam.owner_of(ip)
        if owner is not None:
            raise EndpointConflict(f"address {ip} is allocated by the agent's IPAM to {owner}")

    def _next_id(self) -> int:
        used = set(self._eps)
        for i in range(1, MAX_ENDPOINT_ID + 1):
            if i not in used:
                return i
        raise EndpointConflict("no free endpoint id")

    def _map_entry(self, ep: Endpoint) -> EndpointEntry:
        state = self.policy_state(ep)
        if state is None:  # keep what the datapath enforces until policy is computed
            cur = self.map.lookup(ep.ip)
            state = (cur.flags, cur.policy_rev) if cur and cur.endpoint_id == ep.id else (0, 0)
        return EndpointEntry(
            ip=ep.ip,
            ifindex=ep.host_ifindex,
            endpoint_id=ep.id,
            mac=ep.mac,
            node_mac=ep.host_mac,
            identity=ep.identity,
            flags=state[0],
            policy_rev=state[1],
        )

    def refresh(self, ep_ids: list[int]) -> None:
        """Rewrite these endpoints' datapath entries (their policy state moved)."""
        with self._lock:
            for i in ep_ids:
                ep = self._eps.get(i)
                if ep is not None and ep.state == EndpointState.READY:
                    self.map.upsert(self._map_entry(ep))

    # ---------- labels ----------

    def _identity(self, labels: dict[str, str]) -> int:
        try:
            return self.identity_for(identity_labels(labels))
        except KvStoreError as e:
            raise IdentityUnavailable(
                f"no identity for labels {identity_labels(labels)} yet: the kvstore is "
                f"unreachable ({e}); retry when it is back (pods with labels the "
                "cluster already had when this node last listed them can be added meanwhile)"
            ) from None

    def relabel(self, ep_id: int, set_labels: dict[str, str], remove: list[str]) -> Endpoint:
        """Change a running endpoint's labels; its identity follows."""
        with self._lock:
            ep = self.get(ep_id)
            labels = {k: v for k, v in ep.labels.items() if k not in remove}
            labels.update(set_labels)
            if labels == ep.labels:
                return ep
            old = Endpoint.from_json(ep.to_record())
            identity = self._identity(labels)
            ep.labels, ep.identity = labels, identity
            self.store.save(ep.id, ep.to_record())
            if ep.state == EndpointState.READY:
                self.map.upsert(self._map_entry(ep))
        self.events.publish(EndpointRelabeled(ep, old))
        log.info("endpoint %d relabelled: identity %d -> %d", ep.id, old.identity, ep.identity)
        return ep

    def identities_moved(self, moved: dict[str, int]) -> None:
        """Endpoints given an identity while the kvstore was away, which was
        released meanwhile, take the one their labels have now
        (Identities.revalidate: canonical labels -> identity)."""
        changed = []
        with self._lock:
            for ep in self._eps.values():
                ident = moved.get(canonical_labels(identity_labels(ep.labels)))
                if ident is None or ident == ep.identity or ep.state != EndpointState.READY:
                    continue
                old = Endpoint.from_json(ep.to_record())
                ep.identity = ident
                self.store.save(ep.id, ep.to_record())
                self.map.upsert(self._map_entry(ep))
                changed.append((ep, old))
        for ep, old in changed:
            self.events.publish(EndpointRelabeled(ep, old))
            log.warning(
                "endpoint %d: identity %d, given while the kvstore was away, had been "
                "released; now %d",
                ep.id,
                old.identity,
                ep.identity,
            )

    # ---------- DEL ----------

    def delete(self, container_id: str, ifname: str) -> Endpoint | None:
        """Idempotent: removes whatever exists of the attachment."""
        with self._lock:
            ep = self.find(container_id, ifname)
            if ep is None:
                # nothing recorded; still sweep what a crash may have left
                name = links.lxc_name(container_id, ifname)
                if not self.reaper.pending(name):
                    links.delete_link(self.ipr, name)
                self.ipam.release(owner_key(container_id, ifname))
                return None
            self._teardown(ep)
            return ep

    def _teardown(self, ep: Endpoint) -> None:
        """Remove map entry, address and record; the veth (and with it the pod's
        interface and the host route) is deleted by the reaper thread, since
        unregistering a device waits for an RCU grace period (~20 ms) that the
        runtime need not wait for. The datapath stops delivering at once."""
        if self.host_ports is not None:
            try:
                self.host_ports.release(ep)
            except Exception as e:  # the rest still goes; a restart's sync retries
                log.error("endpoint %d: host ports not released: %s", ep.id, e)
        entry = self.map.lookup(ep.ip)
        if entry is not None and entry.endpoint_id == ep.id:
            self.map.remove(ep.ip)
        if ep.ipam == IpamKind.AGENT:
            self.ipam.release(owner_key(ep.container_id, ep.ifname))
        self.store.mark_deleting(ep.id, ep.to_record())
        self._eps.pop(ep.id, None)
        self.reaper.delete(ep.host_ifname)
        self.events.publish(EndpointRemoved(ep))
        log.info(
            "endpoint %d removed: container=%s ifname=%s ip=%s",
            ep.id,
            ep.container_id,
            ep.ifname,
            ep.ipv4,
        )

    # ---------- CHECK ----------

    def check(self, container_id: str, ifname: str, netns: str) -> list[str]:
        """What is wrong with the attachment; empty when it is healthy."""
        with self._lock:
            ep = self.find(container_id, ifname)
            if ep is None or ep.state != EndpointState.READY:
                raise EndpointNotFound(
                    f"no endpoint for container {container_id} interface {ifname}"
                )
            problems: list[str] = []
            if netns and netns != ep.netns:
                problems.append(f"netns is {netns}, endpoint was created in {ep.netns}")
            problems += self._check_pod(ep)
            problems += self._check_host(ep)
            return problems

    def _check_pod(self, ep: Endpoint) -> list[str]:
        try:
            view = links.inspect_pod(ep.netns, ep.ifname)
        except NetnsError as e:
            return [str(e)]
        if not view.exists:
            return [f"interface {ep.ifname} is missing in {ep.netns}"]
        problems = []
        if not view.up:
            problems.append(f"interface {ep.ifname} is down")
        if view.mac != ep.mac:
            problems.append(f"interface {ep.ifname} has MAC {view.mac}, expected {ep.mac}")
        if view.mtu != ep.mtu:
            problems.append(f"interface {ep.ifname} has MTU {view.mtu}, expected {ep.mtu}")
        if ep.ipv4 not in view.addresses:
            problems.append(f"address {ep.ipv4} is missing on {ep.ifname}")
        if (f"{ep.gateway}/32", None) not in view.routes:
            problems.append(f"on-link route to gateway {ep.gateway} is missing")
        if ("0.0.0.0/0", ep.gateway) not in view.routes:
            problems.append(f"default route via {ep.gateway} is missing")
        return problems

    def _check_host(self, ep: Endpoint) -> list[str]:
        problems = []
        idx = links.link_index(self.ipr, ep.host_ifname)
        if idx is None:
            return [f"host interface {ep.host_ifname} is missing"]
        if idx != ep.host_ifindex:
            problems.append(
                f"host interface {ep.host_ifname} has ifindex {idx}, expected {ep.host_ifindex}"
            )
        problems += LxcDatapath.attached(self.ipr, idx)
        problems += [
            f"host interface {ep.host_ifname}: {p}"
            for p in links.host_veth_problems(ep.host_ifname)
        ]
        if not links.has_host_route(self.ipr, ep.ip, idx):
            problems.append(f"host route {ep.ip}/32 dev {ep.host_ifname} is missing")
        entry = self.map.lookup(ep.ip)
        if entry is None:
            problems.append(f"endpoints map has no entry for {ep.ip}")
        elif entry != self._map_entry(ep):
            problems.append(
                f"endpoints map entry for {ep.ip} is {entry}, expected {self._map_entry(ep)}"
            )
        elif self.map.datapath_lookup(ep.ip) != entry:
            problems.append(f"the datapath does not find {ep.ip} (endpoint_slots out of step)")
        return problems

    # ---------- GC ----------

    def gc(self, network: str, valid: set[tuple[str, str]]) -> list[Endpoint]:
        """Remove this network's endpoints whose (container id, ifname) is not valid."""
        with self._lock:
            stale = [
                ep
                for ep in self._eps.values()
                if ep.network == network and (ep.container_id, ep.ifname) not in valid
            ]
            for ep in stale:
                self._teardown(ep)
            return stale

    # ---------- restore ----------

    def restore(self) -> None:
        """Rebuild from the state dir; re-attach live endpoints, undo dead ones."""
        with self._lock:
            for data in self.store.load_all():
                try:
                    ep = Endpoint.from_json(data)
                except TypeError as e:
                    log.error("skipping unreadable endpoint record %s: %s", data.get("id"), e)
                    continue
                self._eps[ep.id] = ep
            for data in self.store.load_deleting():
                name = data.get("host_ifname")
                if isinstance(name, str):
                    self.reaper.delete(name)
            # before programs are re-attached: a slots map new to this build
            # starts empty, and the new programs look there first
            self.map.sync_slots()
            for ep in list(self._eps.values()):
                self._restore_one(ep)
            self._process_pending_deletes()
            self._sweep_maps()
            self._sweep_ipam()
            fixed = self.map.sync_slots()
            if fixed:
                log.info("endpoint_slots: %d slots rewritten from the endpoints map", fixed)

    def _restore_one(self, ep: Endpoint) -> None:
        if ep.state != EndpointState.READY:
            log.warning("endpoint %d was half-created when the agent stopped; removing it", ep.id)
            self._teardown(ep)
            return
        idx = links.link_index(self.ipr, ep.host_ifname)
        if idx is None or idx != ep.host_ifindex:
            # the pod's netns went away (and took the veth with it) while we were down
            log.warning("endpoint %d lost its veth %s; removing it", ep.id, ep.host_ifname)
            self._teardown(ep)
            return
        # veths of an agent from before pods' IPv6 was closed, or reopened by hand
        links.harden_host_veth(ep.host_ifname)
        self.datapath.attach(self.ipr, idx)
        links.add_host_route(self.ipr, ep.ip, idx)
        if self.map.lookup(ep.ip) != self._map_entry(ep):
            self.map.upsert(self._map_entry(ep))
        log.info("restored endpoint %d (%s, %s)", ep.id, ep.ipv4, ep.host_ifname)

    def _process_pending_deletes(self) -> None:
        pending = self.cfg.pending_delete_dir
        if not os.path.isdir(pending):
            return
        for name in sorted(os.listdir(pending)):
            path = os.path.join(pending, name)
            try:
                with open(path) as f:
                    req = json.load(f)
                cid, ifname = req["containerID"], req["ifname"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("ignoring unreadable pending delete %s: %s", path, e)
                os.unlink(path)
                continue
            log.info("finishing DEL of %s/%s requested while the agent was down", cid, ifname)
            self.delete(cid, ifname)
            os.unlink(path)

    def _sweep_maps(self) -> None:
        live = {ep.ip: ep for ep in self._eps.values()}
        for entry in self.map.entries():
            ep = live.get(entry.ip)
            if ep is None or ep.id != entry.endpoint_id:
                log.warning("removing stale endpoints map entry %s", entry.ip)
                self.map.remove(entry.ip)

    def _sweep_ipam(self) -> None:
        owners = {owner_key(ep.container_id, ep.ifname) for ep in self._eps.values()}
        for ip, owner in self.ipam.allocations().items():
            if owner not in owners:
                log.warning("releasing address %s of vanished owner %s", ip, owner)
                self.ipam.release(owner)
