"""porin-agent: owns the node's datapath, endpoints and IPAM.

Start-up order: config -> state dir -> the datapath's programs (built in a
child process, or this build's pinned programs reused; maps pinned and
reused) -> node device -> restore endpoints (re-attach, finish
pending DELs, sweep leftovers) -> serve the API. On SIGTERM/SIGINT the API
stops and the process exits; programs stay attached and keep forwarding.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import generate_latest

from porin import __version__
from porin.daemon import links, map_migrate
from porin.daemon.api import Api, ApiServer
from porin.daemon.api_debug import routes as debug_routes
from porin.daemon.cluster import ClusterState, NodeInfo
from porin.daemon.compiler import load_programs
from porin.daemon.config import AgentConfig, ConfigError, load_config, parse_listen
from porin.daemon.ctgc import CtGarbageCollector
from porin.daemon.datapath import DatapathError, LxcDatapath
from porin.daemon.endpoints import EndpointManager
from porin.daemon.events import EndpointAdded, EndpointRelabeled, EndpointRemoved, EventBus
from porin.daemon.flows import Enricher, FlowLog
from porin.daemon.health import HealthProber
from porin.daemon.host import HostDatapath
from porin.daemon.hostports import HostPorts
from porin.daemon.ipam import Ipam
from porin.daemon.kvstore import EtcdStore, open_store
from porin.daemon.map_pressure import MapPressure
from porin.daemon.map_specs import PINNED_BY_NAME
from porin.daemon.metrics import AgentMetrics, MetricsServer
from porin.daemon.metrics_collect import ControlPlaneCollector, DatapathCollector
from porin.daemon.monitor_watch import MonitorWatch
from porin.daemon.outbox import Outbox
from porin.daemon.peer_api import PeerServer
from porin.daemon.policy import PolicyManager
from porin.daemon.prefilter import Prefilter
from porin.daemon.service_file import ServiceFileError, load_service_file
from porin.daemon.services import (
    LbMaps,
    NodeContext,
    ServiceConflict,
    ServiceManager,
    ServiceNotFound,
)
from porin.daemon.sock import SockDatapath
from porin.daemon.store import EndpointStore
from porin.daemon.trace import Tracer, TraceRequest
from porin.daemon.trace import Uplink as TraceUplink
from porin.daemon.trace_explain import Explainer
from porin.daemon.tunnel import Tunnel
from porin.daemon.xdp import XdpDatapath
from porin.errors import PorinError
from porin.maps.conntrack import ConntrackMap
from porin.maps.conntrack_confirmed import ConntrackConfirmedMap
from porin.maps.conntrack_tables import Conntrack
from porin.maps.ct4_stats import CtStatsMap
from porin.maps.endpoints import EndpointsMap
from porin.maps.flow_config import FlowConfigMap
from porin.maps.ipcache import IpcacheMap
from porin.maps.lb_reverse_nat import ReverseNatMap, RevNatId
from porin.maps.metrics import MetricsMap, reason_by_name
from porin.maps.nat import NatMap
from porin.models import EndpointState, Service, ServiceSource, ServiceType

log = logging.getLogger("porin.agent")


class AgentError(RuntimeError):
    pass


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.server: ApiServer | None = None

    def start(self) -> None:
        cfg = self.cfg
        refuse_if_running(cfg.api_socket)
        self.metrics = AgentMetrics()
        listen = parse_listen(cfg.prometheus_listen)
        # bound first: a taken port fails the start before anything is changed
        self.metrics_server = MetricsServer(*listen, self.metrics) if listen else None
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(cfg.pending_delete_dir, mode=0o700, exist_ok=True)
        self.programs = load_programs(cfg)
        self.datapath = LxcDatapath(cfg, self.programs)
        # before programs are attached
        map_migrate.carry_over(cfg.bpffs_root, final=False, maps=PINNED_BY_NAME)
        ct = Conntrack(cfg.bpffs_root)
        self._adopt_legacy_ct(ct, drop_legacy=False)  # before new programs are attached
        self.endpoints_map = EndpointsMap(cfg.bpffs_root)
        self.metrics_map = MetricsMap(cfg.bpffs_root)
        self.events = EventBus()
        self.manager = EndpointManager(
            cfg,
            self.datapath,
            Ipam(cfg.pod_cidr, cfg.gateway, cfg.state_dir),
            EndpointStore(cfg.state_dir),
            self.endpoints_map,
            self.events,
        )
        links.ensure_host_device(self.manager.ipr, cfg.gateway, cfg.pod_cidr, cfg.mtu)
        self.host: HostDatapath | None = None
        self.xdp: XdpDatapath | None = None
        if cfg.devices:
            self.host = HostDatapath(cfg, self.manager.ipr, self.programs)
            self.host.attach()
            if cfg.xdp_mode != "disabled":
                self.xdp = XdpDatapath(cfg.xdp_mode, self.manager.ipr, self.programs)
                self.xdp.attach([(u.name, u.ifindex) for u in self.host.uplinks])
        self.sock: SockDatapath | None = None
        if cfg.loopback_host_ports:
            self.sock = SockDatapath(cfg, self.programs)
            self.sock.attach()
        self.manager.restore()
        self._adopt_legacy_ct(ct, drop_legacy=True)  # all replaced: old programs are gone
        ct.close()
        map_migrate.carry_over(cfg.bpffs_root, final=True, maps=PINNED_BY_NAME)
        node = NodeContext(
            node_ips=self.host.node_ips if self.host else [],
            node_port_range=cfg.node_ports,
            is_local=self.manager.has_ip,
            xdp_node_ports=self.xdp is not None,
        )
        self.services = ServiceManager(LbMaps.open(cfg.bpffs_root), cfg.state_dir, node)
        self.services.restore()
        self.manager.host_ports = HostPorts(self.services)
        self.manager.host_ports.sync(self.manager.list())
        for kind in (EndpointAdded, EndpointRemoved):
            self.events.subscribe(
                kind, lambda e: self.services.local_endpoint_changed(e.endpoint.ip)
            )
        if cfg.services_file:
            self.reload_services_file()
        self._start_cluster()
        self.ct_gc = CtGarbageCollector(
            Conntrack(cfg.bpffs_root),
            cfg.ct_gc_interval,
            cfg.ct_gc_min_interval,
            cfg.ct_gc_max_interval,
            nat=NatMap(cfg.bpffs_root) if self.host else None,
            stats=CtStatsMap(cfg.bpffs_root),
        )
        self.ct_gc.on_pass = self.metrics.ct_gc_pass
        self.ct_gc.refused = self._flows_refused
        self.ct_gc.start()
        self.monitor_watch = MonitorWatch(cfg.bpffs_root)
        self.monitor_watch.start()
        self._start_flows()
        self.server = ApiServer(
            cfg.api_socket,
            Api(
                self.manager,
                self.services,
                self.ct_gc,
                self.status,
                self.cluster,
                self.policy,
                self.prefilter,
                self.flows,
            ),
        )
        self.tracer = self._make_tracer()
        self.server.api.routes += [
            ("POST", re.compile(r"^/v1/trace$"), self._trace),
            ("GET", re.compile(r"^/v1/health$"), lambda q, b, m: (200, self._health())),
            ("GET", re.compile(r"^/v1/cluster/peer-token$"), self._peer_token),
        ]
        self.server.api.observe = self.metrics.api_request
        self.server.api.routes += debug_routes(
            cfg, lambda: generate_latest(self.metrics.registry).decode()
        )
        threading.Thread(target=self.server.serve_forever, name="api", daemon=True).start()
        self._start_metrics()
        self._start_peer_api()
        log.info(
            "porin-agent %s ready: node=%s podCIDR=%s gateway=%s socket=%s bpffs=%s endpoints=%d",
            __version__,
            cfg.node_name,
            cfg.pod_cidr,
            cfg.gateway,
            cfg.api_socket,
            cfg.bpffs_root,
            len(self.manager.list()),
        )

    def _make_tracer(self) -> Tracer:
        """`porin trace` (daemon/trace.py): its build is made on first use."""

        def uplinks() -> list[TraceUplink]:
            xdp = {st.ifindex for st in self.xdp.state} if self.xdp else set()
            return [
                TraceUplink(u.name, u.ifindex, _link_mac(u.name), u.ifindex in xdp)
                for u in (self.host.uplinks if self.host else [])
            ]

        def node_by_ip(ip: str) -> str:
            if self.host and any(u.node_ip == ip for u in self.host.uplinks):
                return self.cfg.node_name
            for n in list(self.cluster.nodes.values()):
                if ip in (n.ip, n.gateway):
                    return n.name
            return str(self.cluster.remote_ips.get(ip, {}).get("node", ""))

        def rules() -> dict[str, Any]:
            policy = getattr(self, "policy", None)
            return policy.rule_table() if policy is not None else {}

        explain = Explainer(self.manager.snapshot, node_by_ip, rules)
        return Tracer(self.cfg, self.manager.snapshot, uplinks, explain)

    def _trace(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.tracer.trace(TraceRequest.from_json(body))

    def _start_flows(self) -> None:
        """The flow log (daemon/flows.py): the datapath's flow events, enriched."""
        cfg = self.cfg
        self.flows: FlowLog | None = None
        if cfg.flow_capture == "off":
            FlowConfigMap(cfg.bpffs_root).set(False, 0)  # a capture an older run left on
            return
        rev = ReverseNatMap(cfg.bpffs_root, read_only=True)

        def frontend(rev_nat: int) -> str:
            v = rev.get(RevNatId(rev_nat))
            return f"{v.ip}:{v.host_port}" if v is not None else f"frontend {rev_nat}"

        enricher = Enricher(self.manager.snapshot, lambda: self.cluster.remote_ips, frontend)
        self.flows = FlowLog(
            cfg.bpffs_root,
            cfg.node_name,
            enricher,
            size=cfg.flow_buffer_size,
            capture=cfg.flow_capture,
            linger=cfg.flow_capture_linger,
            rate=cfg.flow_rate_limit,
        )
        self.flows.start()

    def _start_peer_api(self) -> None:
        """The read-only API other nodes read (daemon/peer_api.py) and the
        probes of them (daemon/health.py): only in a cluster, only on the node
        IP (and /healthz on the pod gateway, the overlay probe's target)."""
        self.peer: PeerServer | None = None
        self.peer_gw: PeerServer | None = None
        self.health: HealthProber | None = None
        cfg = self.cfg
        uplink = self.host.uplinks[0] if self.host and self.host.uplinks else None
        if not self.cluster.shared or uplink is None or not cfg.health_port:
            return
        self.peer = PeerServer(
            uplink.node_ip,
            cfg.health_port,
            cfg.node_name,
            self.flows,
            token=lambda: self.cluster.peer_token,
        )
        self.peer.start()
        if self.tunnel.mode != "disabled":
            self.peer_gw = PeerServer(
                cfg.gateway, cfg.health_port, cfg.node_name, None, serve_flows=False
            )
            self.peer_gw.start()
        self.health = HealthProber(lambda: list(self.cluster.nodes.values()), cfg.health_port)
        self.health.start()

    def _start_metrics(self) -> None:
        """The scrape-time collectors, then /metrics (daemon/metrics.py)."""
        cfg, gc = self.cfg, self.ct_gc
        self.pressure = pressure = MapPressure(
            cfg.bpffs_root,
            counted_by_gc={
                ConntrackMap.NAME: lambda: (gc.stats.last_alive, gc.stats.max_entries),
                ConntrackConfirmedMap.NAME: lambda: (
                    gc.stats.last_copies,
                    cfg.ct_confirmed_map_size,
                ),
                NatMap.NAME: lambda: (gc.nat_last_alive, cfg.nat_map_size),
            },
        )
        self.collectors = [
            DatapathCollector(cfg.bpffs_root, pressure, gc),
            ControlPlaneCollector(self),
        ]
        for c in self.collectors:
            self.metrics.registry.register(c)
        if self.metrics_server is not None:
            self.metrics_server.start()

    @staticmethod
    def _adopt_legacy_ct(ct: Conntrack, drop_legacy: bool) -> None:
        moved = ct.adopt_legacy_service_entries(drop_legacy)
        if moved:
            log.info("conntrack: %d service entries of an older build re-keyed", moved)

    def _start_cluster(self) -> None:
        """Tunnel, kvstore, identities and ipcache (the embedded store for one node)."""
        cfg = self.cfg
        uplink = self.host.uplinks[0] if self.host and self.host.uplinks else None
        node_ip = uplink.node_ip if uplink else cfg.gateway
        self.tunnel = Tunnel(
            cfg, self.manager.ipr, uplink.ifindex if uplink else 0, node_ip, self.programs
        )
        self.tunnel.setup()
        self.store = open_store(cfg.kvstore, cfg.state_dir)
        # etcd may go away: changes made meanwhile wait here (the embedded store cannot)
        self.outbox = (
            Outbox(self.store, cfg.state_dir) if isinstance(self.store, EtcdStore) else None
        )
        if isinstance(self.store, EtcdStore):
            self.store.observe = self.metrics.kvstore_op
            self.store.observe_event = self.metrics.kvstore_event
        self.cluster = ClusterState(
            self.store,
            IpcacheMap(cfg.bpffs_root),
            NodeInfo(cfg.node_name, node_ip, cfg.pod_cidr, cfg.tunnel_mode, cfg.gateway),
            cfg.node_lease_ttl,
            local_endpoints=self.manager.ready,  # not list(): see ready()
            apply_service=self._apply_cluster_service,
            drop_service=self._drop_cluster_service,
            local_services=lambda: [
                s.to_json() for s in self.services.list() if s.source == ServiceSource.API
            ],
            identity_grace=cfg.identity_gc_grace_period,
            outbox=self.outbox,
            state_dir=cfg.state_dir,
        )
        self.cluster.host_ips = [cfg.gateway]
        self.cluster.on_nodes = lambda nodes: self.tunnel.sync_routes(
            {n.pod_cidr for n in nodes if n.tunnel == self.tunnel.mode}
        )
        self.manager.identity_for = self.cluster.identities.allocate
        self.events.subscribe(EndpointAdded, lambda e: self.cluster.endpoint_added(e.endpoint))
        self.events.subscribe(EndpointRemoved, lambda e: self.cluster.endpoint_removed(e.endpoint))
        self.events.subscribe(EndpointRelabeled, lambda e: self.cluster.endpoint_added(e.endpoint))
        self.cluster.start()
        self._start_policy()
        self.prefilter: Prefilter | None = None
        if self.xdp is not None:
            self.prefilter = Prefilter(cfg.bpffs_root, cfg.prefilter, self._protected_addresses)
            self.prefilter.outbox = self.outbox
            self.prefilter.start(self.store)
        self.events.start()

    def _start_policy(self) -> None:
        """Network policy: from the kvstore (or the cached copy) into the maps."""
        cfg = self.cfg
        assert self.cluster is not None and self.store is not None
        self.policy = PolicyManager(
            cfg.state_dir,
            cfg.bpffs_root,
            per_endpoint_limit=cfg.policy_entries_per_endpoint,
            total_limit=cfg.policy_map_size,
            cidr_limit=cfg.policy_cidr_map_size,
            local_endpoints=lambda: [
                e for e in self.manager.list() if e.state == EndpointState.READY
            ],
            identities=self.cluster.identities.list,
            remote_ports=self.cluster.remote_named_ports,
            refresh_endpoints=self.manager.refresh,
            ip_identities=self._ip_identities,
        )
        self.manager.policy_state = self.policy.state_for
        self.policy.outbox = self.outbox
        self.cluster.on_remote_change = self.policy.changed
        self.cluster.on_connected = self._kvstore_back
        self.events.subscribe(EndpointAdded, self.policy.changed)
        self.events.subscribe(EndpointRemoved, lambda e: self.policy.forget(e.endpoint))
        self.events.subscribe(EndpointRelabeled, self.policy.changed)
        self.policy.start(self.store)

    def _protected_addresses(self) -> dict[str, str]:
        """Addresses the prefilter must never cover, and why."""
        out = {self.cfg.gateway: "the pods' gateway"}
        for u in self.host.uplinks if self.host else []:
            out[u.node_ip] = f"this node's address on {u.name}"
        for url in (self.cfg.kvstore or {}).get("endpoints", []):
            host = urlsplit(url).hostname
            if host:
                out[host] = "the kvstore's"
        for r in self.manager.ipr.get_default_routes(family=socket.AF_INET):
            gw = r.get_attr("RTA_GATEWAY")
            if gw:
                out[gw] = "the node network's gateway"
        return out

    def _kvstore_back(self) -> None:
        """After every (re)connection: identities handed out while it was away
        checked (an endpoint whose was released meanwhile takes the new one),
        then the policies taken from the store again."""
        assert self.cluster is not None
        self.manager.identities_moved(self.cluster.identities.revalidate())
        self.policy.resync()

    def _flows_refused(self) -> int:
        """New flows the datapath refused so far for a full conntrack or NAT table."""
        return sum(
            self.metrics_map.count(reason_by_name(name).code, d).packets
            for name in ("CT_MAP_FULL", "NAT_MAP_FULL")
            for d in range(4)
        )

    def _ip_identities(self) -> dict[str, int]:
        """Every known pod address and its identity (remote ones from the kvstore)."""
        assert self.cluster is not None
        out = self.cluster.remote_identities()
        out.update({e.ip: e.identity for e in self.manager.list()})
        return out

    def _apply_cluster_service(self, data: dict[str, Any]) -> None:
        svc = Service.from_json(data)
        try:
            if self.services.get(svc.id).to_json() == svc.to_json():
                return
        except ServiceNotFound:
            pass
        try:
            self.services.upsert(svc)
        except ServiceConflict as e:  # e.g. the id of a pod's host port here
            log.error("cluster service %d not programmed on this node: %s", svc.id, e)

    def _drop_cluster_service(self, sid: int) -> None:
        try:
            self.services.check_not_host_port(sid)
            self.services.delete(sid)
        except ServiceNotFound:
            pass
        except ServiceConflict as e:
            log.warning("cluster service %d not deleted: %s", sid, e)

    def reload_services_file(self) -> bool:
        """(Re)load servicesFile; on any error keep the programmed services."""
        path = self.cfg.services_file
        if not path:
            log.info("SIGHUP: no servicesFile configured, nothing to reload")
            return False
        try:
            svcs = load_service_file(path)
            programmed, deleted = self.services.replace_source("file", svcs)
        except (ServiceFileError, ServiceConflict) as e:
            log.error("services file rejected, programmed services unchanged: %s", e)
            return False
        log.info("services file %s: %d services programmed, %d removed", path, programmed, deleted)
        return True

    def stop(self) -> None:
        if getattr(self, "events", None) is not None:
            self.events.stop()
        if getattr(self, "policy", None) is not None:
            self.policy.stop()
        if getattr(self, "prefilter", None) is not None:
            self.prefilter.stop()
        if getattr(self, "cluster", None) is not None:
            self.cluster.stop()
        if getattr(self, "ct_gc", None) is not None:
            self.ct_gc.stop()
        if getattr(self, "monitor_watch", None) is not None:
            self.monitor_watch.stop()
        if getattr(self, "health", None) is not None:
            self.health.stop()
        for name in ("peer", "peer_gw"):
            if getattr(self, name, None) is not None:
                getattr(self, name).stop()
        if getattr(self, "flows", None) is not None:
            self.flows.stop()
        if getattr(self, "tracer", None) is not None:
            self.tracer.close()
        if getattr(self, "metrics_server", None) is not None:
            self.metrics_server.stop()
        for c in getattr(self, "collectors", []):
            c.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            try:
                os.unlink(self.cfg.api_socket)
            except FileNotFoundError:
                pass
        log.info("porin-agent stopped; the datapath keeps forwarding")

    def status(self, verbose: bool = False) -> dict[str, Any]:
        out = self._summary()
        if verbose:
            out["verbose"] = {
                "devices": self._devices(),
                "maps": [
                    {
                        "name": f.name,
                        "entries": f.entries,
                        "capacity": f.capacity,
                        "pressure": round(f.pressure, 4),
                    }
                    for f in self.pressure.sample()
                ],
                "controllers": [c.controller.to_json() for c in self._controlled()],
            }
        return out

    def _peer_token(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        """For `porin observe --cluster` (the socket is root's only)."""
        if not self.cluster.peer_token:
            raise PorinError(
                "no cluster peer token: this node has not reached a shared kvstore",
                http_status=409,
            )
        return 200, {"token": self.cluster.peer_token}

    def _health(self) -> list[dict[str, Any]]:
        prober = getattr(self, "health", None)
        if prober is None:
            raise PorinError(
                "node health is probed only in a cluster (kvstore and devices): "
                "this node has no peers",
                http_status=409,
            )
        return prober.status()

    def _controlled(self) -> list[Any]:
        """Every component with a background loop (daemon/controllers.py)."""
        parts = [self.ct_gc, self.cluster, self.monitor_watch, self.flows]
        parts.append(getattr(self, "health", None))
        return [p for p in parts if p is not None and hasattr(p, "controller")]

    def _devices(self) -> list[dict[str, Any]]:
        """Which programs run where, and XDP's mode per uplink."""
        xdp = {s["device"]: s["mode"] for s in (self.xdp.status() if self.xdp else [])}
        out = []
        for u in self.host.uplinks if self.host else []:
            progs = ["tc ingress from_netdev", "tc egress to_netdev"]
            if u.name in xdp:
                progs.insert(0, f"xdp from_xdp ({xdp[u.name]})")
            out.append({"device": u.name, "programs": progs})
        if self.host:
            out.append({"device": "lo", "programs": ["tc ingress from_host_lo"]})
        if self.tunnel.mode == "vxlan":
            out.append({"device": "porin_vxlan", "programs": ["tc ingress from_overlay"]})
        eps = self.manager.snapshot()
        out.append(
            {
                "device": f"lxc* ({len(eps)} endpoints)",
                "programs": ["tc ingress from_container", "tc egress to_container"],
            }
        )
        if self.sock and self.sock.state.cgroup:
            out.append(
                {
                    "device": f"cgroup {self.sock.state.cgroup}",
                    "programs": sorted(self.sock.programs),
                }
            )
        return out

    def _summary(self) -> dict[str, Any]:
        eps = self.manager.list()
        drops = sum(m.packets for m in self.metrics_map.metrics() if m.is_drop)
        return {
            "version": __version__,
            "node": self.cfg.node_name,
            "podCIDR": self.cfg.pod_cidr,
            "gateway": self.cfg.gateway,
            "mtu": self.cfg.mtu,
            "uptimeSeconds": int(time.time() - self.started),
            "bpffsRoot": self.cfg.bpffs_root,
            "apiSocket": self.cfg.api_socket,
            "datapath": {
                "programs": sorted(self.datapath.programs),
                "endpointsMap": f"{len(self.endpoints_map)}/{self.endpoints_map.max_entries}",
                "droppedPackets": drops,
            },
            "ipam": {
                "allocated": len(self.manager.ipam.allocations()),
                "capacity": self.manager.ipam.capacity,
            },
            "endpoints": {
                "total": len(eps),
                "ready": sum(1 for e in eps if e.state == EndpointState.READY),
            },
            "services": len(self.services.list()),
            "conntrack": {**self.ct_gc.stats.to_json(), "confirmed": self.ct_gc.confirmed_stats()},
            "host": self._host_status(),
            "kvstore": self.cluster.status(),
            "policy": self.policy.status() if getattr(self, "policy", None) else {},
            "tunnel": {"mode": self.cfg.tunnel_mode, "podMTU": self.cfg.pod_mtu},
            "flows": self.flows.status() if self.flows else {"capture": "off"},
            "peerAPI": f"http://{self.peer.address}" if getattr(self, "peer", None) else "",
            "metrics": {
                "prometheus": (
                    f"http://{self.metrics_server.address}/metrics"
                    if self.metrics_server
                    else "disabled"
                )
            },
        }

    def _host_status(self) -> dict[str, Any]:
        cfg = self.cfg
        nat = self.ct_gc.nat_stats() if self.host else {}
        return {
            "devices": [
                {"name": u.name, "ifindex": u.ifindex, "nodeIP": u.node_ip}
                for u in (self.host.uplinks if self.host else [])
            ],
            "masquerade": "bpf" if self.host and cfg.enable_masquerade else "disabled",
            "xdp": self.xdp.status() if self.xdp else [],
            "nonMasqueradeCIDRs": cfg.non_masquerade_cidrs,
            "snatPortRange": cfg.snat_port_range,
            "nodePortRange": cfg.node_port_range,
            "nat": nat,
            "hostPorts": {
                "count": sum(1 for s in self.services.list() if s.type == ServiceType.HOST_PORT),
                "loopback": (
                    f"socket hooks on {self.sock.state.cgroup}"
                    if self.sock and self.sock.state.cgroup
                    else (self.sock.state.why_not if self.sock else "disabled")
                ),
            },
        }


def refuse_if_running(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return
    finally:
        s.close()
    raise AgentError(f"another porin-agent is already serving {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="porin-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config file (default: embedded single-node)")
    parser.add_argument("--log-level", help="override logLevel from the config")
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the embedded default config and exit",
    )
    parser.add_argument(
        "--uninstall",
        action="store_true",
        help="remove everything the (stopped) agent put on this node, then exit",
    )
    args = parser.parse_args(argv)
    if args.print_default_config:
        from porin.daemon.config import DEFAULT_CONFIG_YAML

        print(DEFAULT_CONFIG_YAML, end="")
        return
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"porin-agent: invalid configuration: {e}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=(args.log_level or cfg.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from porin.daemon.log_ring import RING

    RING.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(RING)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if args.uninstall:
        from porin.daemon.uninstall import uninstall

        try:
            uninstall(cfg)
        except (AgentError, OSError) as e:
            log.error("uninstall failed: %s", e)
            sys.exit(1)
        return
    agent = Agent(cfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    reload = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda signum, frame: (reload.set(), stop.set()))
    try:
        agent.start()
    except (AgentError, DatapathError, OSError) as e:
        log.error("cannot start: %s", e)
        sys.exit(1)
    while True:
        stop.wait()
        if reload.is_set():
            reload.clear()
            stop.clear()
            log.info("received SIGHUP, reloading the services file")
            agent.reload_services_file()
            continue
        break
    agent.stop()


if __name__ == "__main__":
    main()


def _link_mac(name: str) -> str:
    try:
        with open(f"/sys/class/net/{name}/address") as f:
            return f.read().strip()
    except OSError:
        return "02:00:00:00:00:02"
