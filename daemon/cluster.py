"""Cluster state through the kvstore: nodes, identities, ipcache, services.

Each agent
  - registers its node under /porin/nodes/<name> with a lease it keeps alive
    (nodeLeaseTTL, 15 minutes by default: an agent restarting or upgrading is
    no change to the others; a node that stays away disappears from them when
    the lease expires, one uninstalled at once);
  - publishes its endpoints under /porin/ipcache/<ip> (identity, node) with
    the same lease;
  - allocates identities cluster-wide from endpoint labels
    (/porin/identities/<id> and /porin/identity-labels/<hash>, created in
    etcd transactions so two agents never hand out one id twice);
  - shares services under /porin/services/<id>;
  - mirrors the other nodes' state into its ipcache map.

When the kvstore is unreachable the datapath keeps forwarding with what the
maps hold; the agent reports itself degraded, retries with backoff, and on
reconnecting registers again and resyncs everything (removing what vanished,
adding what it missed).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from porin.daemon.controllers import Controller
from porin.daemon.identities import IDENTITY_USERS, Identities
from porin.daemon.kvstore import EtcdStore, Event, KvStoreError, LocalStore
from porin.daemon.outbox import Outbox
from porin.daemon.policy_compile import NamedPort
from porin.daemon.store import read_json, write_json_atomic
from porin.maps.ipcache import (
    IDENTITY_HOST,
    IDENTITY_REMOTE_NODE,
    IDENTITY_UNKNOWN,
    IpcacheEntry,
    IpcacheMap,
)
from porin.models import Endpoint

log = logging.getLogger("porin.cluster")

NODES = "/porin/nodes/"
IPCACHE = "/porin/ipcache/"
SERVICES = "/porin/services/"
# the secret the nodes' peer APIs ask of each other (daemon/peer_api.py): the first
# node makes it, every node reads it; whoever can read the kvstore has it
PEER_TOKEN = "/porin/cluster/peer-token"
BACKOFF_MAX = 2.0  # seconds between two attempts to reach a lost kvstore, at most
# seconds between two lease refreshes, at most: they are also how a lost etcd
# is noticed (and a reconnection writes the outbox), so not a quarter of a
# 15-minute lease
KEEPALIVE_MAX = 5.0


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str
    pod_cidr: str
    tunnel: str
    gateway: str = ""  # the node's pod gateway: its own address in the overlay

    def to_json(self) -> dict[str, str]:
        out = {"name": self.name, "ip": self.ip, "podCIDR": self.pod_cidr, "tunnel": self.tunnel}
        if self.gateway:
            out["gateway"] = self.gateway
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NodeInfo:
        return cls(
            str(d["name"]),
            str(d["ip"]),
            str(d["podCIDR"]),
            str(d.get("tunnel", "")),
            str(d.get("gateway", "")),  # nodes of older builds publish none
        )


class ClusterState:
    def __init__(
        self,
        store: LocalStore | EtcdStore,
        ipcache: IpcacheMap,
        me: NodeInfo,
        lease_ttl: int,
        local_endpoints: Callable[[], list[Endpoint]],
        apply_service: Callable[[dict[str, Any]], None],
        drop_service: Callable[[int], None],
        local_services: Callable[[], list[dict[str, Any]]],
        identity_grace: float = 900.0,
        outbox: Outbox | None = None,
        state_dir: str = "",
    ) -> None:
        self.store = store
        self.ipcache = ipcache
        self.me = me
        self.lease_ttl = lease_ttl
        self.local_endpoints = local_endpoints
        self.apply_service = apply_service
        self.drop_service = drop_service
        self.local_services = local_services
        self.outbox = outbox
        if outbox is not None:
            outbox.online = lambda: self.connected
            outbox.on_failure = self._degrade
        # the store's incarnation (its peer token) when this node last saw it
        self._epoch_path = os.path.join(state_dir, "kvstore-epoch.json") if state_dir else ""
        self.identities = Identities(
            store,
            node=me.name,
            grace=identity_grace,
            local_usage=lambda: Counter(ep.identity for ep in self.local_endpoints()),
            lease=lambda: self._lease,
            known_path=os.path.join(state_dir, "identities-known.json") if state_dir else "",
        )
        # called after a remote endpoint appeared, moved or went (policy selectors)
        self.on_remote_change: Callable[[], None] = lambda: None
        # the node's addresses besides me.ip (the pods' gateway): identity host
        self.host_ips: list[str] = []
        # called after every (re)connection to the kvstore
        self.on_connected: Callable[[], None] = lambda: None
        # called with the remote nodes after every change of the ipcache (routes, health)
        self.on_nodes: Callable[[list[NodeInfo]], None] = lambda nodes: None
        # the embedded store has no peers: endpoints and services need no publishing
        self.shared = isinstance(store, EtcdStore)
        self.nodes: dict[str, NodeInfo] = {}
        self.remote_ips: dict[str, dict[str, Any]] = {}  # ip -> {identity, node}
        self.connected = False
        self.peer_token = ""  # "" until the kvstore was reached once
        self.last_error = ""
        self.resyncs = 0
        self._lease: object = None
        self._cancels: list[Callable[[], None]] = []
        # guards nodes, remote_ips and the ipcache map. Lock order: the
        # endpoint manager's, then this one (an ADD reads remote_named_ports),
        # so nothing holding it waits for the manager (local_endpoints does
        # not) or for the kvstore
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.controller = Controller("kvstore-keepalive")

    # ---------- lifecycle ----------

    def start(self) -> None:
        try:
            self._connect()
        except KvStoreError as e:
            self._degrade(e)
        self._thread = threading.Thread(target=self._keepalive, name="kvstore", daemon=True)
        self._thread.start()
        self.identities.start(lambda: self.connected)

    def stop(self) -> None:
        """Stop talking to the kvstore; the lease is left to expire (a restart is hitless)."""
        self._stop.set()
        self.identities.stop()
        self._cancel_watches()

    def _connect(self) -> None:
        """(Re)connect: only the keepalive thread (and start(), before it) calls
        this. The kvstore calls run without the lock, which an ADD may be
        waiting for; the lock is taken to swap the new view in (_resync)."""
        self._cancel_watches()
        if self.shared:
            self.store.create(PEER_TOKEN, secrets.token_hex(24))  # if absent
            token = self.store.get_prefix(PEER_TOKEN).get(PEER_TOKEN)
            self.peer_token = token if isinstance(token, str) else ""
            self._lease = self.store.grant_lease(self.lease_ttl)
            self.store.put(NODES + self.me.name, self.me.to_json(), lease=self._lease)
            mine = {ep.ip: ep for ep in self.local_endpoints()}
            for ep in mine.values():
                self._put_endpoint(ep)
            self._drop_stale_endpoints(set(mine))
        self.identities.publish_usage()  # under the new lease; stale keys of ours go
        if self.outbox is not None and not self.outbox.flush():
            raise KvStoreError("the changes made while it was away could not be written")
        self._cancels = [
            self.store.watch_prefix(NODES, self._on_node),
            self.store.watch_prefix(IPCACHE, self._on_ipcache),
            self.store.watch_prefix(SERVICES, self._on_service),
        ]
        self._resync()
        self.connected = True
        self.last_error = ""
        self.on_connected()
        log.info("kvstore %s: connected, %d nodes known", self.store.name, len(self.nodes))

    def _degrade(self, e: Exception) -> None:
        if self.connected or not self.last_error:
            log.warning("kvstore unreachable, datapath keeps its last state: %s", e)
        self.connected = False
        self.last_error = str(e)
        self._cancel_watches()

    def _cancel_watches(self) -> None:
        for cancel in self._cancels:
            try:
                cancel()
            except Exception:
                pass
        self._cancels = []

    def _keepalive(self) -> None:
        # retries stay frequent: a refused connection costs nothing, and every
        # node should be back within seconds of etcd (BACKOFF_MAX after it)
        backoff = 0.5
        while not self._stop.is_set():
            if not self.connected:
                try:
                    with self.controller.run():
                        self._connect()
                    backoff = 0.5
                except KvStoreError as e:
                    self._degrade(e)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            self._stop.wait(min(max(0.5, self.lease_ttl / 4), KEEPALIVE_MAX))
            if self._stop.is_set():
                break
            try:
                with self.controller.run():
                    self.store.refresh_lease(self._lease)
                    if self.outbox is not None and not self.outbox.flush():
                        raise KvStoreError("the changes kept for it could not be written")
            except KvStoreError as e:
                self._degrade(e)

    # ---------- this node's endpoints and services ----------

    def _put_endpoint(self, ep: Endpoint) -> None:
        value: dict[str, Any] = {
            "identity": ep.identity,
            "node": self.me.name,
            "nodeIP": self.me.ip,
        }
        if ep.labels:  # the flow log's names for this end on other nodes
            value["labels"] = ep.labels
        named = [p for p in ep.ports if p.get("name")]
        if named:  # for other nodes' egress rules with named ports
            value["ports"] = named
        self.store.put(IPCACHE + ep.ip, value, lease=self._lease)

    def _drop_stale_endpoints(self, mine: set[str]) -> None:
        """Our ipcache keys for pods gone while the agent or etcd was away (their
        delete failed or never ran): removed now, not left under a live lease."""
        for key, v in self.store.get_prefix(IPCACHE).items():
            ip = key[len(IPCACHE) :]
            if isinstance(v, dict) and v.get("node") == self.me.name and ip not in mine:
                self.store.delete(key)
                log.info("ipcache %s: its pod went while this node was away", ip)

    def remote_identities(self) -> dict[str, int]:
        with self._lock:
            return {ip: int(v.get("identity", 0)) for ip, v in self.remote_ips.items()}

    def remote_named_ports(self) -> dict[int, tuple[NamedPort, ...]]:
        """identity -> the named ports other nodes' endpoints of it declare."""
        out: dict[int, set[NamedPort]] = {}
        with self._lock:
            for v in self.remote_ips.values():
                for p in v.get("ports") or ():
                    try:
                        np = NamedPort(str(p["name"]), int(p["containerPort"]), str(p["protocol"]))
                    except (KeyError, TypeError, ValueError):
                        continue
                    out.setdefault(int(v.get("identity", 0)), set()).add(np)
        return {i: tuple(sorted(x, key=str)) for i, x in out.items()}

    def endpoint_added(self, ep: Endpoint) -> None:
        """Also after a relabel: the new identity's use, and the old one's end."""
        with self._lock:  # not inside a _program() pass, which would undo it
            self.ipcache.upsert(IpcacheEntry(f"{ep.ip}/32", ep.identity, ""))
        try:
            if self.shared:
                self._put_endpoint(ep)
            self.identities.publish_usage()
        except KvStoreError as e:
            self._degrade(e)  # published again on reconnect

    def endpoint_removed(self, ep: Endpoint) -> None:
        with self._lock:
            self.ipcache.remove(f"{ep.ip}/32")
        try:
            if self.shared:
                self.store.delete(IPCACHE + ep.ip)
            self.identities.publish_usage()
        except KvStoreError as e:
            self._degrade(e)

    def service_changed(self, svc: dict[str, Any]) -> None:
        if self.shared:
            self._write({SERVICES + str(svc["id"]): svc}, [])

    def service_deleted(self, sid: int) -> None:
        if self.shared:
            self._write({}, [SERVICES + str(sid)])

    def _write(self, puts: dict[str, Any], deletes: list[str]) -> None:
        """Into the store, or the outbox while it is away (written on reconnect,
        before the store's state is taken: a change made meanwhile is not lost)."""
        if self.outbox is not None:
            if not self.outbox.write(puts, deletes):
                self._degrade(KvStoreError("unreachable: changes pending"))
            return
        try:
            self.store.commit(puts, deletes)
        except KvStoreError as e:
            self._degrade(e)

    # ---------- mirroring the others ----------

    def _on_node(self, ev: Event) -> None:
        name = ev.key[len(NODES) :]
        with self._lock:
            if name == self.me.name:
                return
            if ev.kind == "put":
                try:
                    self.nodes[name] = NodeInfo.from_json(ev.value)
                except (KeyError, TypeError):
                    return
                log.info(
                    "node %s joined (%s, pods %s)",
                    name,
                    ev.value.get("ip"),
                    ev.value.get("podCIDR"),
                )
            else:
                if self.nodes.pop(name, None) is not None:
                    log.info("node %s left", name)
                for ip in [ip for ip, v in self.remote_ips.items() if v.get("node") == name]:
                    del self.remote_ips[ip]
            self._program()

    def _on_ipcache(self, ev: Event) -> None:
        ip = ev.key[len(IPCACHE) :]
        with self._lock:
            if ev.kind == "put":
                if isinstance(ev.value, dict) and ev.value.get("node") != self.me.name:
                    self.remote_ips[ip] = ev.value
            else:
                self.remote_ips.pop(ip, None)
            self._program()
        self.on_remote_change()

    def _on_service(self, ev: Event) -> None:
        try:
            sid = int(ev.key[len(SERVICES) :])
        except ValueError:
            return
        try:
            if ev.kind == "put":
                self.apply_service(ev.value)
            else:
                self.drop_service(sid)
        except Exception as e:
            log.error("cannot apply service %s from the kvstore: %s", sid, e)

    def _resync(self) -> None:
        """Make the local view match the store exactly (after (re)connecting)."""
        self.resyncs += 1
        nodes = {}
        for key, value in self.store.get_prefix(NODES).items():
            name = key[len(NODES) :]
            if name != self.me.name:
                try:
                    nodes[name] = NodeInfo.from_json(value)
                except (KeyError, TypeError):
                    continue
        remote_ips = {
            key[len(IPCACHE) :]: v
            for key, v in self.store.get_prefix(IPCACHE).items()
            if isinstance(v, dict) and v.get("node") != self.me.name
        }
        # the watches run already: their events wait for the lock and replay
        # on top of this view, in order, so it ends at the latest state
        with self._lock:
            self.nodes, self.remote_ips = nodes, remote_ips
            self._program()
        if not self.shared:
            return
        stored = self.store.get_prefix(SERVICES)
        for value in stored.values():
            try:
                self.apply_service(value)
            except Exception as e:
                log.error("cannot apply service from the kvstore: %s", e)
        stored_ids = {int(k[len(SERVICES) :]) for k in stored if k[len(SERVICES) :].isdigit()}
        # what this node wrote while away is in the store by now (the outbox).
        # A service of ours the store lacks was deleted by another node
        # meanwhile, unless the store itself is new (wiped, or another etcd):
        # then this node's services seed it again.
        same_store = self._epoch_seen() == self.peer_token != ""
        for svc in self.local_services():
            if svc["id"] in stored_ids:
                continue
            if same_store:
                log.info("service %d was deleted while this node was away", svc["id"])
                self.drop_service(svc["id"])
            else:
                self.store.put(SERVICES + str(svc["id"]), svc)
        self._epoch_remember()

    def _epoch_seen(self) -> str:
        v = read_json(self._epoch_path, default={}) if self._epoch_path else {}
        return v.get("peerToken", "") if isinstance(v, dict) else ""

    def _epoch_remember(self) -> None:
        if self._epoch_path and self.peer_token and self._epoch_seen() != self.peer_token:
            write_json_atomic(self._epoch_path, {"peerToken": self.peer_token})

    def _program(self) -> None:
        """Write the desired ipcache (remote nodes, their pods, this node) and drop the rest."""
        want: dict[str, IpcacheEntry] = {}
        for n in self.nodes.values():
            want[f"{n.ip}/32"] = IpcacheEntry(f"{n.ip}/32", IDENTITY_REMOTE_NODE, "", node=True)
            want[n.pod_cidr] = IpcacheEntry(n.pod_cidr, IDENTITY_UNKNOWN, n.ip)
            if n.gateway:  # the node's own traffic through the overlay comes from there
                want[f"{n.gateway}/32"] = IpcacheEntry(
                    f"{n.gateway}/32", IDENTITY_REMOTE_NODE, n.ip
                )
        by_name = {n.name: n for n in self.nodes.values()}
        for ip, v in self.remote_ips.items():
            node = by_name.get(v.get("node", ""))
            if node is None:
                continue  # its node is gone (or not seen yet)
            want[f"{ip}/32"] = IpcacheEntry(f"{ip}/32", int(v.get("identity", 0)), node.ip)
        want[f"{self.me.ip}/32"] = IpcacheEntry(f"{self.me.ip}/32", IDENTITY_HOST, "", node=True)
        for ip in self.host_ips:  # the node's other addresses its own traffic may leave from
            want.setdefault(f"{ip}/32", IpcacheEntry(f"{ip}/32", IDENTITY_HOST, ""))
        for ep in self.local_endpoints():
            want[f"{ep.ip}/32"] = IpcacheEntry(f"{ep.ip}/32", ep.identity, "")
        have = {e.prefix: e for e in self.ipcache.entries()}
        for prefix, e in want.items():
            if have.get(prefix) != e:
                self.ipcache.upsert(e)
        for prefix in have.keys() - want.keys():
            self.ipcache.remove(prefix)
        try:
            self.on_nodes(list(self.nodes.values()))
        except Exception:
            log.exception("reacting to the node list failed")

    # ---------- views ----------

    def node_list(self) -> list[dict[str, Any]]:
        me = {**self.me.to_json(), "self": True, "health": "ok" if self.connected else "degraded"}
        others = [{**n.to_json(), "self": False, "health": "ok"} for n in self.nodes.values()]
        return sorted([me, *others], key=lambda n: n["name"])

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.store.name,
            "endpoint": getattr(self.store, "endpoint", ""),
            "state": "connected" if self.connected else "degraded",
            "lastError": self.last_error,
            "resyncs": self.resyncs,
            "nodes": len(self.nodes) + 1,
        }


def service_json_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def deregister(store: LocalStore | EtcdStore, node_name: str) -> int:
    """A node leaving the cluster for good: remove its node and endpoint keys now,
    so the others drop it at once instead of when its lease expires."""
    removed = 0
    for key, value in store.get_prefix(IPCACHE).items():
        if isinstance(value, dict) and value.get("node") == node_name:
            store.delete(key)
            removed += 1
    if NODES + node_name in store.get_prefix(NODES + node_name):
        store.delete(NODES + node_name)
        removed += 1
    for key in store.get_prefix(IDENTITY_USERS):
        if key.endswith("/" + node_name):
            store.delete(key)  # its endpoints' use of identities
            removed += 1
    return removed
