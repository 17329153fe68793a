"""Metrics read at scrape time: the datapath's counters and the agent's state.

Nothing here blocks on the kvstore or takes a lock a CNI request holds for
long: the datapath is read from its per-CPU maps (one batch read each), the
control plane from the agent's own records.

    porin_drop_count_total{reason,direction}      packets dropped (bpf/lib/reasons.h names)
    porin_drop_bytes_total{reason,direction}
    porin_forward_count_total{reason,direction}   every other verdict
    porin_forward_bytes_total{reason,direction}
    porin_xdp_actions_total{action}               what bpf_xdp.c returned
    porin_nat_port_exhaustion_total               new flows refused for lack of an SNAT port
    porin_monitor_events_lost_total               events the datapath found the ring full for
    porin_flow_events_lost_total{reason}          flow events not written (ring_full, rate_limited)
    porin_bpf_map_pressure{map_name}              entries / capacity (daemon/map_pressure.py)
    porin_bpf_map_entries{map_name}, porin_bpf_map_capacity{map_name}
    porin_conntrack_gc_runs_total, porin_conntrack_gc_entries_deleted_total,
    porin_nat_gc_entries_deleted_total
    porin_endpoints{state}, porin_services{type}, porin_service_backends,
    porin_identities, porin_policies, porin_policy_endpoints_enforced,
    porin_nodes{health}, porin_kvstore_connected, porin_ipam_addresses{state},
    porin_controller_runs_total{name,outcome}, porin_controller_consecutive_failures{name},
    porin_node_reachable{node,path}, porin_node_probe_latency_seconds{node,path},
    porin_agent_info{version,node}
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from porin import __version__
from porin.daemon.map_pressure import MapPressure
from porin.maps.ct4_stats import CtStatsMap
from porin.maps.flow_lost import FlowLostMap
from porin.maps.metrics import MetricsMap, direction_name, reasons
from porin.maps.monitor_lost import MonitorLostMap
from porin.maps.pinned import MapNotFound, PinnedMap
from porin.maps.xdp_metrics import XdpMetricsMap

log = logging.getLogger("porin.metrics")

NAT_NO_PORT = 144  # DROP_NAT_NO_PORT in bpf/lib/reasons.h


class DatapathCollector(Collector):
    """The BPF side: verdict counters, XDP actions, ring buffer losses, map fill."""

    def __init__(self, bpffs_root: str, pressure: MapPressure, ct_gc: Any = None) -> None:
        self.bpffs_root = bpffs_root
        self.pressure = pressure
        self.ct_gc = ct_gc  # CtGarbageCollector
        self._maps: dict[type, PinnedMap] = {}

    def describe(self) -> list[Metric]:
        return []  # read only when scraped, never at registration

    def _map(self, cls: type[PinnedMap]) -> PinnedMap | None:
        if cls not in self._maps:
            try:
                self._maps[cls] = cls(self.bpffs_root, read_only=True)
            except (MapNotFound, OSError, ValueError) as e:
                log.debug("metrics: %s not readable: %s", cls.NAME, e)
                return None
        return self._maps[cls]

    def collect(self) -> Iterator[Metric]:
        yield from self._verdicts()
        yield from self._xdp()
        yield from self._maps_fill()
        yield from self._ct_gc()

    def _verdicts(self) -> Iterator[Metric]:
        labels = ["reason", "direction"]
        drops = CounterMetricFamily(
            "porin_drop_count",
            "Packets dropped by the datapath, by reason and direction",
            labels=labels,
        )
        drop_bytes = CounterMetricFamily(
            "porin_drop_bytes", "Bytes dropped by the datapath", labels=labels, unit="bytes"
        )
        fwd = CounterMetricFamily(
            "porin_forward_count",
            "Packets the datapath forwarded, translated or passed on, by reason and direction",
            labels=labels,
        )
        fwd_bytes = CounterMetricFamily(
            "porin_forward_bytes", "Bytes the datapath let through", labels=labels, unit="bytes"
        )
        exhausted = 0
        m = self._map(MetricsMap)
        names = reasons()
        for metric in m.metrics() if m is not None else []:
            r = names.get(metric.reason)
            lv = [r.name if r else str(metric.reason), direction_name(metric.direction)]
            if metric.is_drop:
                drops.add_metric(lv, metric.packets)
                drop_bytes.add_metric(lv, metric.bytes)
            else:
                fwd.add_metric(lv, metric.packets)
                fwd_bytes.add_metric(lv, metric.bytes)
            if metric.reason == NAT_NO_PORT:
                exhausted += metric.packets
        yield from (drops, drop_bytes, fwd, fwd_bytes)
        yield CounterMetricFamily(
            "porin_nat_port_exhaustion",
            "New masqueraded or NodePort flows refused: no free SNAT port towards the peer",
            value=exhausted,
        )
        flow_lost = self._map(FlowLostMap)
        fam = CounterMetricFamily(
            "porin_flow_events_lost",
            "Flow events the datapath did not write: ring buffer full, or over flowRateLimit",
            labels=["reason"],
        )
        for why, n in (flow_lost.totals() if flow_lost is not None else {}).items():
            fam.add_metric(["ring_full" if why == "ringFull" else "rate_limited"], n)
        yield fam
        lost = self._map(MonitorLostMap)
        yield CounterMetricFamily(
            "porin_monitor_events_lost",
            "Monitor events the datapath could not write: the ring buffer was full",
            value=lost.total() if lost is not None else 0,
        )

    def _xdp(self) -> Iterator[Metric]:
        x = self._map(XdpMetricsMap)
        if x is None:  # no uplinks: no XDP program, no series
            return
        fam = CounterMetricFamily(
            "porin_xdp_actions", "XDP actions bpf_xdp.c returned on the uplinks", labels=["action"]
        )
        for action, n in x.totals().items():
            fam.add_metric([action], n)
        yield fam

    def _maps_fill(self) -> Iterator[Metric]:
        pressure = GaugeMetricFamily(
            "porin_bpf_map_pressure",
            "Fill ratio of each BPF map that can fill up (entries / capacity)",
            labels=["map_name"],
        )
        entries = GaugeMetricFamily(
            "porin_bpf_map_entries", "Entries in each BPF map that can fill up", labels=["map_name"]
        )
        capacity = GaugeMetricFamily(
            "porin_bpf_map_capacity", "Maximum entries of each BPF map", labels=["map_name"]
        )
        for fill in self.pressure.sample():
            pressure.add_metric([fill.name], fill.pressure)
            entries.add_metric([fill.name], fill.entries)
            capacity.add_metric([fill.name], fill.capacity)
        yield from (pressure, entries, capacity)

    def _ct_gc(self) -> Iterator[Metric]:
        gc = self.ct_gc
        if gc is None:
            return
        yield CounterMetricFamily(
            "porin_conntrack_gc_runs", "Conntrack garbage collection passes", value=gc.stats.runs
        )
        yield CounterMetricFamily(
            "porin_conntrack_gc_entries_deleted",
            "Expired conntrack entries removed by the GC",
            value=gc.stats.deleted_total,
        )
        stats = self._map(CtStatsMap)
        if stats is not None:
            c = stats.read()
            for name, key, text in (
                ("protected", "protected", "Confirmed flows given a copy a flood cannot evict"),
                ("protect_full", "protectFull", "Flows confirmed while ct4_confirmed was full"),
                ("restored", "restored", "Evicted conntrack entries put back from their copy"),
            ):
                yield CounterMetricFamily(f"porin_conntrack_{name}", text, value=c[key])
        yield CounterMetricFamily(
            "porin_nat_gc_entries_deleted",
            "NAT entries the GC removed because their flow's conntrack entry was gone",
            value=gc.nat_deleted_total,
        )

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()


class ControlPlaneCollector(Collector):
    """The agent's own records: endpoints, services, identities, policies, nodes."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent  # daemon/agent.py Agent, read when scraped

    def describe(self) -> list[Metric]:
        return []

    def close(self) -> None:
        return None  # holds nothing of its own

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        info = GaugeMetricFamily(
            "porin_agent_info", "The agent's version and node", labels=["version", "node"]
        )
        info.add_metric([__version__, a.cfg.node_name], 1)
        yield info
        eps = a.manager.snapshot()
        yield _by_label(
            "porin_endpoints",
            "Endpoints on this node by state",
            "state",
            Tally(str(e.state) for e in eps),
            ("creating", "ready", "deleting"),
        )
        ipam = a.manager.ipam
        allocated = len(ipam.allocations())
        fam = GaugeMetricFamily(
            "porin_ipam_addresses", "Pod addresses of this node", labels=["state"]
        )
        fam.add_metric(["allocated"], allocated)
        fam.add_metric(["free"], max(0, ipam.capacity - allocated))
        yield fam
        by_type, backends = a.services.census()
        yield _by_label(
            "porin_services",
            "Services programmed on this node by type",
            "type",
            Tally(by_type),
            ("clusterip", "nodeport", "hostport"),
        )
        yield GaugeMetricFamily(
            "porin_service_backends",
            "Backends of all services programmed on this node",
            value=backends,
        )
        yield from self._cluster(eps)
        yield from self._controllers()
        yield from self._node_health()
        policy = getattr(a, "policy", None)
        if policy is not None:
            st = policy.status()
            yield GaugeMetricFamily(
                "porin_policies", "Network policies known to this node", value=st["policies"]
            )
            yield GaugeMetricFamily(
                "porin_policy_endpoints_enforced",
                "Local endpoints under at least one policy",
                value=st["endpointsEnforced"],
            )

    def _node_health(self) -> Iterator[Metric]:
        prober = getattr(self.agent, "health", None)
        if prober is None:
            return
        up = GaugeMetricFamily(
            "porin_node_reachable",
            "1 if the last probe of the node over the path worked (icmp, http, overlay)",
            labels=["node", "path"],
        )
        latency = GaugeMetricFamily(
            "porin_node_probe_latency_seconds",
            "Latency of the last successful probe of the node over the path",
            labels=["node", "path"],
        )
        for n in prober.status():
            paths = {
                **n["nodeNetwork"],
                **({"overlay": n["overlay"]["http"]} if n["overlayIP"] else {}),
            }
            for path, p in paths.items():
                if p["reachable"] is None:
                    continue
                up.add_metric([n["name"], path], 1 if p["reachable"] else 0)
                if p["latencyMs"] is not None:
                    latency.add_metric([n["name"], path], p["latencyMs"] / 1000)
        yield from (up, latency)

    def _controllers(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "porin_controller_runs",
            "Passes of the agent's background loops (daemon/controllers.py), by outcome",
            labels=["name", "outcome"],
        )
        failing = GaugeMetricFamily(
            "porin_controller_consecutive_failures",
            "Failed passes in a row of each background loop (0: its last pass worked)",
            labels=["name"],
        )
        for part in self.agent._controlled():
            c = part.controller.to_json()
            runs.add_metric([c["name"], "success"], c["runs"] - c["failures"])
            runs.add_metric([c["name"], "failure"], c["failures"])
            failing.add_metric([c["name"]], c["consecutiveFailures"])
        yield from (runs, failing)

    def _cluster(self, eps: tuple[Any, ...]) -> Iterator[Metric]:
        cluster = getattr(self.agent, "cluster", None)
        if cluster is None:
            return
        identities = {e.identity for e in eps if e.identity}
        identities |= {v.get("identity") for v in list(cluster.remote_ips.values())}
        identities.discard(None)
        yield GaugeMetricFamily(
            "porin_identities",
            "Distinct identities of the endpoints this node knows (local and remote)",
            value=len(identities),
        )
        yield _by_label(
            "porin_nodes",
            "Nodes of the cluster as this node sees them, by health",
            "health",
            Tally(n["health"] for n in cluster.node_list()),
            ("ok", "degraded"),
        )
        yield GaugeMetricFamily(
            "porin_kvstore_connected",
            "1 while the kvstore is reachable, 0 while the agent works from its cache",
            value=1 if cluster.connected else 0,
        )


def _by_label(
    name: str, doc: str, label: str, counts: Tally[str], always: tuple[str, ...]
) -> GaugeMetricFamily:
    """A gauge per label value, with the usual values present even at zero."""
    fam = GaugeMetricFamily(name, doc, labels=[label])
    for value in dict.fromkeys([*always, *sorted(counts)]):
        fam.add_metric([value], counts.get(value, 0))
    return fam
