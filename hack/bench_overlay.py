#!/usr/bin/env python3
"""Cross-node pod-to-pod TCP_RR and TCP_STREAM: Porin's overlay against a flannel-like baseline.

One run builds, on lab namespaces only (never the machine's own interfaces),
three two-node clusters on one underlay bridge, one pod on each node:

1. porin-vxlan: two Porin nodes (`tunnel: vxlan`) sharing an etcd.
2. porin-ipip: two Porin nodes (`tunnel: ipip`) sharing another etcd
   (a cluster never mixes tunnel modes).
3. baseline: flannel's vxlan backend by hand, no BPF: per node a Linux
   bridge cni0 holding the pod subnet's gateway, the pod on a veth, a kernel
   VXLAN device flannel.1 (VNI 1, UDP 8472, nolearning) with static
   route/neighbour/fdb entries towards the other node, ip_forward=1.

Every pod has MTU 1450 (Porin VXLAN's automatic value; the IPIP pods are
given 1450 through the netconf's `mtu`, see --ipip-mtu). Between the pods:
TCP_RR (1-byte request/response over one persistent TCP_NODELAY
connection) and TCP_STREAM (iperf3). Both ends of every test are pinned to
one CPU; the variants are interleaved in each round with the order rotated
between rounds, and the results are the medians of the same-round ratios
to the baseline and of the absolute numbers. The Porin agents' counters
prove the traffic went through Porin's overlay.

Everything created is removed at exit, also on error, Ctrl-C or SIGTERM.

    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_overlay.py [--quick]

Exit status: 0 target met (Porin VXLAN >= 1.0x the baseline for RR and
STREAM), 1 target missed or a problem seen, 2 not root, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from benchlib import (
    CPU,
    RR_CLIENT,
    RR_SERVER,
    Signals,
    busy_pct,
    cpu_ticks,
    fmt_table,
    in_ns,
    loadavg,
)
from porinlab import VENV_BIN, Etcd, Netns, Node, Underlay, run, unique, wait_for

RR_PORT = 7777
STREAM_PORT = 5201
POD_MTU = 1450  # flannel's and Porin VXLAN's pod MTU on a 1500-byte underlay
CLUSTER_CIDR = "10.244.0.0/16"
RATIO_TARGET = 1.0  # Porin VXLAN / baseline, RR and STREAM
NOISY_PCT = 10.0  # busy % of the CPUs the tests leave idle that hints at other load

# Addressing; it lives only inside the namespaces the benchmark creates.
ETCD_IP = {"vxlan": "198.18.0.2", "ipip": "198.18.0.3"}
PORIN_NODES = {
    "vxlan": (("198.18.0.11", "10.244.1.0/24"), ("198.18.0.12", "10.244.2.0/24")),
    "ipip": (("198.18.0.21", "10.244.3.0/24"), ("198.18.0.22", "10.244.4.0/24")),
}
BASE_NODES = (("198.18.0.31", 1), ("198.18.0.32", 2))  # node IP, pod subnet 10.246.N.0/24
BASE_VTEP_MAC = "0a:58:0a:f6:{:02x}:00"  # flannel.1's MAC on the node with subnet N

TUNNELED = "sent to another node through the overlay"
FROM_TUNNEL = "received from another node through the overlay"


# ---------------------------------------------------------------- lab


class Lab(benchlib.Lab):
    """benchlib.Lab that names its namespaces itself, so it can list them."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []  # namespaces (and so bpffs pin dirs) it made, for the log

    def netns(self, kind: str) -> Netns:
        name = self.name(kind)
        self.on_close(lambda: del_netns(name))  # also if Netns() fails half-way
        return Netns(name=name)

    def name(self, kind: str) -> str:
        name = unique(kind)
        self.names.append(name)
        return name


def del_netns(name: str) -> None:
    """Remove a named netns if it exists (no error when it is already gone)."""
    if os.path.exists(f"/var/run/netns/{name}"):
        run(["ip", "netns", "del", name], check=False)


def remove_node_leftovers(name: str) -> None:
    """What a lab node named `name` leaves if its constructor or close() failed."""
    del_netns(name)
    pins = f"/sys/fs/bpf/{name}"
    if os.path.isdir(pins):
        shutil.rmtree(pins, ignore_errors=True)


def link_mtu(ns: Netns, dev: str = "eth0") -> int:
    return int(ns.link(dev)["mtu"])


@dataclass
class Variant:
    """One two-node cluster with a pod on each node: client on the first, server on the second."""

    name: str
    client: Netns
    server: Netns
    server_ip: str
    nodes: list[Node] = field(default_factory=list)  # Porin nodes (empty for the baseline)
    mtu: int = 0
    rr: list[float] = field(default_factory=list)
    stream: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- clusters


def porin_nodes(lab: Lab, underlay: Underlay, mode: str) -> list[Node]:
    """An etcd and two Porin nodes with `tunnel: mode`; the agents are not started yet."""
    etcd_name = lab.name("etcd")
    lab.on_close(lambda: del_netns(etcd_name))
    etcd = Etcd(underlay, ETCD_IP[mode], name=etcd_name)
    lab.on_close(etcd.close)
    etcd.start(detach=True)
    nodes = []
    for node_ip, pod_cidr in PORIN_NODES[mode]:
        name = lab.name("node")
        lab.on_close(lambda name=name: remove_node_leftovers(name))
        node = Node(
            pod_cidr=pod_cidr,
            underlay=underlay,
            node_ip=node_ip,
            name=name,
            kvstore={"endpoints": [etcd.endpoint]},
            tunnel=mode,
            clusterCIDR=CLUSTER_CIDR,
        )
        lab.on_close(node.close)
        nodes.append(node)
    return nodes


def start_agents(nodes: list[Node], timeout: float = 120.0) -> None:
    """Start every agent at once (they compile their programs in parallel), then wait."""
    for node in nodes:
        with open(node.log_path, "a") as log:
            node.proc = node.ns.popen(
                [str(VENV_BIN / "porin-agent"), "--config", node.config_path],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stopped by Node.close, not by a terminal Ctrl-C
            )
    for node in nodes:
        wait_for(node.healthy, timeout, f"porin-agent of {node.ns.name} to be ready")


def porin_variant(lab: Lab, name: str, nodes: list[Node], mtu: int | None) -> Variant:
    """A pod on each node through the CNI plugin; waits until they reach each other."""
    conf: dict[str, Any] = {"mtu": mtu} if mtu else {}
    a = nodes[0].add_pod(**conf)
    lab.names.append(a.ns.name)  # Node.close() DELs and removes it
    b = nodes[1].add_pod(**conf)
    lab.names.append(b.ns.name)
    wait_for(lambda: a.ping(b.ip) and b.ping(a.ip), 30, f"{name}: pods to reach each other")
    v = Variant(name, a.ns, b.ns, b.ip, nodes=nodes, mtu=link_mtu(a.ns))
    if link_mtu(b.ns) != v.mtu:
        raise RuntimeError(f"{name}: pod MTUs differ: {v.mtu} and {link_mtu(b.ns)}")
    return v


def baseline_variant(lab: Lab, underlay: Underlay) -> Variant:
    """flannel's vxlan backend by hand: cni0 bridge, veth pods, flannel.1, static entries."""
    nodes, pods = [], []
    for i, (node_ip, n) in enumerate(BASE_NODES):
        node = lab.netns("bnode")
        underlay.attach(node, node_ip)
        pod = lab.netns("bpod")
        host_if = f"veth-b{i}"
        node.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for cmd in (
            ["link", "add", "cni0", "mtu", str(POD_MTU), "type", "bridge"],
            ["addr", "add", f"10.246.{n}.1/24", "dev", "cni0"],
            ["link", "set", "cni0", "up"],
            ["link", "add", host_if, "mtu", str(POD_MTU), "type", "veth"]
            + ["peer", "name", "eth0", "netns", pod.path],
            ["link", "set", host_if, "master", "cni0", "up"],
            ["link", "add", "flannel.1", "address", BASE_VTEP_MAC.format(n)]
            + ["mtu", str(POD_MTU), "type", "vxlan", "id", "1", "dstport", "8472"]
            + ["local", node_ip, "dev", "eth0", "nolearning"],
            ["addr", "add", f"10.246.{n}.0/32", "dev", "flannel.1"],
            ["link", "set", "flannel.1", "up"],
        ):
            node.exec(["ip", *cmd])
        for cmd in (
            ["link", "set", "eth0", "mtu", str(POD_MTU), "up"],
            ["addr", "add", f"10.246.{n}.2/24", "dev", "eth0"],
            ["route", "add", "default", "via", f"10.246.{n}.1"],
        ):
            pod.exec(["ip", *cmd])
        nodes.append(node)
        pods.append(pod)
    for node, (peer_ip, m) in zip(nodes, reversed(BASE_NODES), strict=True):
        mac = BASE_VTEP_MAC.format(m)  # what flanneld programs for a peer node
        node.exec(["ip", "route", "add", f"10.246.{m}.0/24", "via", f"10.246.{m}.0"]
                  + ["dev", "flannel.1", "onlink"])  # fmt: skip
        node.exec(["ip", "neigh", "replace", f"10.246.{m}.0", "lladdr", mac]
                  + ["dev", "flannel.1", "nud", "permanent"])  # fmt: skip
        node.exec(["bridge", "fdb", "append", mac, "dev", "flannel.1", "dst", peer_ip])
    server_ip = f"10.246.{BASE_NODES[1][1]}.2"
    wait_for(lambda: pods[0].exec(["ping", "-c1", "-W1", server_ip], check=False).returncode == 0,
             15, "baseline: pods to reach each other")  # fmt: skip
    return Variant("baseline", pods[0], pods[1], server_ip, mtu=link_mtu(pods[0]))


# ---------------------------------------------------------------- traffic


def start_servers(lab: Lab, v: Variant) -> None:
    rr = lab.spawn(in_ns(v.server, [sys.executable, "-c", RR_SERVER, v.server_ip, str(RR_PORT)]))
    assert rr.stdout is not None and rr.stderr is not None
    if rr.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{v.name}: TCP_RR server did not start: {rr.stderr.read()}")
    lab.spawn(in_ns(v.server, ["iperf3", "-s", "-B", v.server_ip, "-p", str(STREAM_PORT)]))
    wait_for(
        lambda: v.server.exec(["ss", "-Hltn", f"sport = :{STREAM_PORT}"]).stdout.strip(),
        10,
        f"{v.name}: iperf3 server",
    )


def tcp_rr(v: Variant, seconds: float) -> float:
    """Transactions per second of 1-byte request/response."""
    cmd = [sys.executable, "-c", RR_CLIENT, v.server_ip, str(RR_PORT), str(seconds)]
    res = json.loads(run(in_ns(v.client, cmd), timeout=seconds + 30).stdout)
    return res["transactions"] / res["seconds"]


def tcp_stream(v: Variant, seconds: int) -> float:
    """Bulk throughput in Gbit/s (iperf3, receiver side, after a 1 s omitted warm-up)."""
    cmd = ["iperf3", "-c", v.server_ip, "-p", str(STREAM_PORT), "-t", str(seconds), "-O", "1"]
    proc = run(in_ns(v.client, [*cmd, "-J"]), check=False, timeout=seconds + 30)
    res = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or "error" in res:
        raise RuntimeError(f"{v.name}: iperf3 failed: {res.get('error') or proc.stderr}")
    return res["end"]["sum_received"]["bits_per_second"] / 1e9


def measure(
    variants: list[Variant], rounds: int, rr_s: float, stream_s: int, log: Callable[[str], None]
) -> None:
    """Each round runs every variant once, RR then STREAM; the order rotates per round."""
    for v in variants:  # connectivity check and warm-up
        tcp_rr(v, 0.3)
    for i in range(rounds):
        k = i % len(variants)
        order = variants[k:] + variants[:k]
        for v in order:
            v.rr.append(tcp_rr(v, rr_s))
        for v in order:
            v.stream.append(tcp_stream(v, stream_s))
        log(
            f"  round {i + 1}/{rounds} ({', '.join(v.name for v in order)}): "
            + "  ".join(f"{v.name} {v.rr[-1]:,.0f}/s {v.stream[-1]:.2f}G" for v in variants)
        )


def ratios(v: Variant, base: Variant, metric: str) -> list[float]:
    mine, theirs = getattr(v, metric), getattr(base, metric)
    return [a / b for a, b in zip(mine, theirs, strict=True)]


# ---------------------------------------------------------------- Porin's counters


def counters(node: Node) -> dict[tuple[str, str], int]:
    """Packets per (reason, direction) of the node's metrics map; drops as "drop: reason"."""
    out: dict[tuple[str, str], int] = {}
    for row in node.porin_json("metrics", "list"):
        reason = ("drop: " if row["drop"] else "") + row["reason"]
        out[(reason, row["direction"])] = int(row["packets"])
    return out


def delta(
    before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


def agent_errors(node: Node) -> list[str]:
    try:
        text = Path(node.log_path).read_text()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln]


def check_porin(
    variants: list[Variant],
    before: dict[str, dict[tuple[str, str], int]],
    problems: list[str],
    notes: list[str],
) -> str:
    """Table of the overlay counters each Porin node added since `before`.

    No tunneled packet, a drop, or an error in an agent's log is appended to `problems`."""
    rows = []
    for v in variants:
        for node in v.nodes:
            d = delta(before[node.ns.name], counters(node))
            drops = {k: n for k, n in d.items() if k[0].startswith("drop: ") and n}
            rows.append(
                [v.name, node.ns.name, f"{d.get((TUNNELED, 'egress'), 0):,}",
                 f"{d.get((FROM_TUNNEL, 'ingress'), 0):,}", f"{sum(drops.values()):,}"]
            )  # fmt: skip
            if d.get((TUNNELED, "egress"), 0) <= 0:
                problems.append(
                    f"{v.name}: {node.ns.name} counted no '{TUNNELED}': "
                    "the traffic bypassed Porin's overlay"
                )
            for (reason, direction), n in sorted(drops.items()):
                problems.append(f"{v.name}: {node.ns.name} {reason} ({direction}): {n:,} packets")
            since_start = [
                f"{r['reason']} ({r['direction']}) {r['packets']}"
                for r in node.porin_json("metrics", "list", "--drops")
                if int(r["packets"])
            ]
            notes.append(
                f"{v.name} {node.ns.name} `porin metrics list --drops` since the agent started: "
                + (", ".join(since_start) or "no drops")
            )
            errors = agent_errors(node)
            if errors:
                problems.append(
                    f"{node.ns.name}: agent log has {len(errors)} error lines: {errors[0]}"
                )
    header = ["variant", "node", f"{TUNNELED} (egress)", f"{FROM_TUNNEL} (ingress)", "drops"]
    return fmt_table(header, rows, {2, 3, 4})


# ---------------------------------------------------------------- report


def spread(values: list[float], digits: int) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def ratio_cell(v: Variant, base: Variant, metric: str) -> str:
    if v is base:
        return "1 (reference)"
    return f"{statistics.median(ratios(v, base, metric)):.3f}x"


def print_report(variants: list[Variant], base: Variant) -> list[list[str]]:
    """Per-round and summary tables; returns the pass/fail rows."""
    print(f"\nPer round (both ends pinned to CPU {CPU}); ratio = variant / baseline, same round:")
    rows = []
    for i in range(len(base.rr)):
        row = [str(i + 1)]
        for v in variants:
            row.append(f"{v.rr[i]:,.0f}")
            if v is not base:
                row.append(f"{v.rr[i] / base.rr[i]:.3f}")
        for v in variants:
            row.append(f"{v.stream[i]:.2f}")
            if v is not base:
                row.append(f"{v.stream[i] / base.stream[i]:.3f}")
        rows.append(row)
    header = ["round"]
    for metric in ("RR", "STREAM"):
        for v in variants:
            header.append(f"{metric} {v.name}")
            if v is not base:
                header.append("ratio")
    print(fmt_table(header, rows, set(range(len(header)))))

    n = len(base.rr)
    print(f"\nSummary (medians of {n} rounds; ratios are medians of same-round ratios):")
    rows = []
    for v in variants:
        rows.append(
            [v.name, str(v.mtu), f"{statistics.median(v.rr):,.0f}", f"({spread(v.rr, 0)})",
             ratio_cell(v, base, "rr"), f"{statistics.median(v.stream):.2f}",
             f"({spread(v.stream, 2)})", ratio_cell(v, base, "stream")]
        )  # fmt: skip
    print(
        fmt_table(
            [
                "variant",
                "pod MTU",
                "TCP_RR trans/s",
                "min-max",
                "RR / base",
                "TCP_STREAM Gbit/s",
                "min-max",
                "STREAM / base",
            ],
            rows,
            {1, 2, 3, 4, 5, 6, 7},
        )
    )
    checks = []
    for v in variants:
        if v is base:
            continue
        for metric, label in (("rr", "TCP_RR"), ("stream", "TCP_STREAM")):
            r = statistics.median(ratios(v, base, metric))
            target = v.name == "porin-vxlan"
            ok = r >= RATIO_TARGET
            checks.append(
                [f"{v.name} {label} / baseline", f"{r:.3f}x",
                 f">= {RATIO_TARGET:.1f}x" if target else "(no target)",
                 ("PASS" if ok else "FAIL") if target else ("met" if ok else "below")]
            )  # fmt: skip
    print()
    print(fmt_table(["check", "ratio", "target", "result"], checks, {1}))
    return checks


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when the target is met, 1 when not, 130 when interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 short rounds")
    ap.add_argument("--rounds", type=int, help="interleaved rounds [6; quick 3]")
    ap.add_argument("--seconds", type=float, help="seconds per RR test [3; quick 1.5]")
    ap.add_argument("--stream-seconds", type=int, help="iperf3 -t, plus 1 s omitted [3; quick 1]")
    ap.add_argument(
        "--ipip-mtu",
        type=int,
        default=POD_MTU,
        help=f"IPIP pods' MTU [{POD_MTU}; Porin's default 1480]",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_overlay.py needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 6)
    rr_s = args.seconds or (1.5 if args.quick else 3.0)
    stream_s = args.stream_seconds or (1 if args.quick else 3)
    mode = "quick" if args.quick else "full"
    signal.signal(signal.SIGINT, Signals.handler)
    signal.signal(signal.SIGTERM, Signals.handler)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    load_start = loadavg()
    other_ns = len(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else 0
    problems: list[str] = []
    notes: list[str] = []
    variants: list[Variant] = []
    lab = Lab()
    try:
        log(f"{mode} run, {os.cpu_count()} CPUs; building the underlay, two etcds, four nodes")
        underlay_name = lab.name("net")
        lab.on_close(lambda: del_netns(underlay_name))
        underlay = Underlay(name=underlay_name)
        clusters = {m: porin_nodes(lab, underlay, m) for m in ("vxlan", "ipip")}
        all_nodes = clusters["vxlan"] + clusters["ipip"]
        log("starting the four porin-agents (in parallel)")
        start_agents(all_nodes)
        log("pods: one per node through the CNI plugin; the baseline by hand")
        vx = porin_variant(lab, "porin-vxlan", clusters["vxlan"], None)
        ipip = porin_variant(lab, "porin-ipip", clusters["ipip"], args.ipip_mtu)
        base = baseline_variant(lab, underlay)
        variants = [vx, ipip, base]
        if vx.mtu != base.mtu:
            problems.append(f"pod MTU differs: porin-vxlan {vx.mtu}, baseline {base.mtu}")
        for v in variants:
            start_servers(lab, v)
        before = {n.ns.name: counters(n) for n in all_nodes}
        log(
            f"traffic: {rounds} rounds x 3 variants x (TCP_RR {rr_s:g}s, "
            f"TCP_STREAM {stream_s}s + 1s omitted)"
        )
        ticks = cpu_ticks()
        measure(variants, rounds, rr_s, stream_s, log)
        others = [c for c in ticks if c.startswith("cpu") and c not in ("cpu", f"cpu{CPU}")]
        idle_busy = busy_pct(ticks, others) if others else 0.0

        tunnel_table = check_porin([vx, ipip], before, problems, notes)
    except BaseException:
        if not Signals.interrupted:
            raise
    finally:
        Signals.cleaning = True  # a second Ctrl-C must not cut the clean-up short
        log("removing everything the benchmark created: " + " ".join(lab.names))
        lab.close()
        Signals.cleaning = False
    if Signals.interrupted:
        print("interrupted; everything the benchmark created has been removed", file=sys.stderr)
        return 130

    print("\nPorin's counters during the traffic tests (packets), proof of the overlay path:")
    print(tunnel_table)
    checks = print_report(variants, variants[-1])
    print(
        f"  Pod MTU {POD_MTU} on all variants unless shown otherwise; underlay MTU 1500. "
        f"RR: {rr_s:g}s per test, Python client/server; STREAM: iperf3 -t {stream_s} -O 1.\n"
        f"  loadavg start {load_start}, end {loadavg()}; {other_ns} network namespaces "
        f"existed before the run; run took {time.monotonic() - started:.0f}s"
    )
    print(
        f"  Noise check: CPUs other than {CPU} were {idle_busy:.0f}% busy during the traffic "
        "tests (the benchmark leaves them nearly idle: more means concurrent load)."
    )
    if idle_busy > NOISY_PCT:
        print("  WARNING: other processes competed for the machine: the numbers may be noisy")
    for note in notes:
        print(f"  NOTE: {note}")
    for p in problems:
        print(f"  PROBLEM: {p}")
    failed = any(c[3] == "FAIL" for c in checks)
    print(f"\nResult: {'FAIL' if failed or problems else 'PASS'}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
