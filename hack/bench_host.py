#!/usr/bin/env python3
"""Host datapath: Porin's BPF masquerade and NodePort against iptables on a plain node.

One run measures, on lab namespaces only (never the machine's own interfaces
nor the root namespace's iptables):

Topology: a node network (porinlab.Underlay, 198.18.0.0/24) with an external
host (198.18.0.100, the nodes' default gateway) and
  - porin:      a Porin node (198.18.0.11, its own porin-agent with
                `devices: [eth0]`, masquerade on by default) and one pod
                attached through the CNI plugin; a NodePort service
                (10.96.0.10:80, node port 30080) with that pod as backend;
  - ipt-legacy: a plain node (198.18.0.12) without any Porin program: one
                "plain routed pod" (a veth pair, /32 addresses and routes,
                ip_forward=1) and kube-proxy-style rules in the node's nat
                table, loaded with iptables-legacy-restore: the pod subnet is
                masqueraded (`POSTROUTING -s <pod subnet> -o eth0 -j
                MASQUERADE`) and PREROUTING -> KUBE-SERVICES -> KUBE-NODEPORTS
                (`-p tcp --dport 30080`) -> KUBE-SVC-* -> KUBE-SEP-* DNATs to
                the pod's :8080 (no SNAT: the backend is on the node, replies
                are un-DNATed by conntrack, as Porin keeps the client address);
  - ipt-nft:    the same on another plain node (198.18.0.13), iptables-nft.

Measured per variant, all clients and servers pinned to one CPU:
  1. masquerade, pod -> external host: new connections/s (connect, 1-byte
     request/response, close; a small C client compiled here) and
     TCP_STREAM (iperf3, Gbit/s);
  2. NodePort, external host -> NODE_IP:30080 -> the pod: new connections/s.
The variants are interleaved in every round (the order rotates from round to
round); results are medians of same-round ratios porin/iptables and medians of
the absolute numbers. Also reported: the NAT table of the Porin node (size,
and mappings that lost one of their two entries), the client addresses the
external server saw (the node IPs: masquerade happened), the growth of
Porin's verdict counters, every failed connection (local port, error) and
how busy the machine was otherwise.

Everything created is removed at exit, also on error, Ctrl-C or SIGTERM.

    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_host.py           7 rounds (~3.5 min)
    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_host.py --quick   2 short rounds (<1 min)

Exit status: 0 every target met, 1 a target missed or a problem seen, 130 interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from benchlib import (
    CPU,
    Signals,
    busy_pct,
    cpu_ticks,
    fmt_table,
    in_ns,
    loadavg,
    median,
    steal_pct,
    tune_client,
)
from porinlab import Netns, Node, Pod, Underlay, run, wait_for

UNDERLAY = "198.18.0.0/24"
EXT_IP = "198.18.0.100"
PORIN_NODE_IP = "198.18.0.11"
PORIN_POD_CIDR = "10.244.1.0/24"
SERVER_PORT = 8080  # the request/response server: external host and every pod
IPERF_PORT = 5201
SVC_FRONTEND = "10.96.0.10:80"
NODE_PORT = 30080
RATIO_TARGET = 1.0
NOISY_PCT = 15.0  # busy % of the CPUs the benchmark leaves idle that hints at other load


@dataclass(frozen=True)
class IptFlavour:
    name: str
    binary: str  # iptables-legacy / iptables-nft
    node_ip: str
    subnet: int  # the plain pod lives in 10.245.<subnet>.0/24


IPT_FLAVOURS = {
    "legacy": IptFlavour("ipt-legacy", "iptables-legacy", "198.18.0.12", 1),
    "nft": IptFlavour("ipt-nft", "iptables-nft", "198.18.0.13", 2),
}

# ---------------------------------------------------------------- the C client/server

# server PORT           accept loop, echoes single bytes until EOF; counts client
#                       addresses; a "?" byte gets them back as JSON
# client IP PORT SECS   connect, 1-byte request/response, close, as fast as it can
# stats IP PORT         the server's client addresses
CRR_C = Path(__file__).resolve().parent / "progs" / "crr.c"  # the request/response tool


def build_crr(workdir: str) -> str:
    """Compile the request/response tool; returns its path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("a C compiler (cc) is needed for the connection-rate client")
    exe = os.path.join(workdir, "crr")
    run([cc, "-O2", "-Wall", "-o", exe, str(CRR_C)])
    return exe


# ---------------------------------------------------------------- helpers


def pinned_cpu_time(exclude: set[int]) -> dict[int, tuple[str, float]]:
    """(name, CPU seconds so far) of the user processes, other than `exclude`, allowed
    to run on CPU only: other benchmarks pinned where this one measures."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in exclude:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        if f"Cpus_allowed_list:\t{CPU}\n" not in status or "\nPPid:\t2\n" in status:
            continue  # not pinned here, or a kernel thread (ksoftirqd does our softirqs)
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        fields = rest.split()  # fields[0] is field 3 (state): utime, stime are 14, 15
        out[int(pid)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


class Lab(benchlib.Lab):
    """benchlib.Lab that also checks, after close, that what it made is gone."""

    def __init__(self) -> None:
        super().__init__()
        self._paths: list[str] = []  # netns files, bpffs roots, work dirs: gone after close
        self._pids: list[int] = []
        self.spawned: set[int] = set()  # our long-lived servers (nsenter and taskset exec)

    def track(self, *paths: str, pid: int | None = None) -> None:
        self._paths += paths
        if pid is not None:
            self._pids.append(pid)

    def leftovers(self) -> list[str]:
        """What `close()` should have removed but is still there."""
        left = [p for p in self._paths if os.path.exists(p)]
        return left + [f"pid {pid}" for pid in self._pids if os.path.exists(f"/proc/{pid}")]

    def netns(self, kind: str) -> Netns:
        ns = super().netns(kind)
        self.track(ns.path)
        return ns

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = super().spawn(cmd, env)
        self.spawned.add(proc.pid)
        return proc


# ---------------------------------------------------------------- topology


@dataclass
class Variant:
    """One node under test: where its pod is and how the outside reaches it."""

    name: str
    pod_ns: Netns
    node_ip: str
    ipt: IptFlavour | None = None  # None: Porin


def start_porin_node(lab: Lab, underlay: Underlay) -> tuple[Node, Pod]:
    """A Porin node on the underlay, one pod via CNI and the NodePort service."""
    node = Node(pod_cidr=PORIN_POD_CIDR, underlay=underlay, node_ip=PORIN_NODE_IP, gateway=EXT_IP)
    lab.on_close(node.close)
    lab.track(node.ns.path, node.cfg.bpffs_root, node.workdir)
    node.start_agent(timeout=180, detach=True)  # detached: Ctrl-C must not stop it before DELs
    if node.proc is not None and (os.cpu_count() or 1) > 1:
        # keep the agent (GC, API) off the CPU the traffic runs on
        run(["taskset", "-a", "-p", "-c", "0", str(node.proc.pid)], check=False)
    if node.proc is not None:
        lab.track(pid=node.proc.pid)
    pod = node.add_pod()
    lab.track(pod.ns.path)
    node.porin(
        "service", "update", "--id", "1", "--frontend", SVC_FRONTEND,
        "--backends", f"{pod.ip}:{SERVER_PORT}", "--type", "nodeport",
        "--node-port", str(NODE_PORT),
    )  # fmt: skip
    return node, pod


def kube_proxy_rules(pod_subnet: str, pod_ip: str) -> str:
    """The nat table of a kube-proxy node (iptables mode) with one NodePort service
    whose single endpoint is the local pod, plus the pod subnet's masquerade."""
    svc, sep = "KUBE-SVC-BENCHHOSTNODEPRT", "KUBE-SEP-BENCHHOSTPODBACK"
    comment = '-m comment --comment "default/bench:http"'
    return "\n".join(
        [
            "*nat",
            ":KUBE-SERVICES - [0:0]",
            ":KUBE-NODEPORTS - [0:0]",
            ":KUBE-POSTROUTING - [0:0]",
            ":KUBE-MARK-MASQ - [0:0]",
            f":{svc} - [0:0]",
            f":{sep} - [0:0]",
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
            "-j KUBE-POSTROUTING",
            f"-A POSTROUTING -s {pod_subnet} -o eth0 -j MASQUERADE",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
            f"-A KUBE-SERVICES -d {SVC_FRONTEND.split(':')[0]}/32 -p tcp {comment} "
            f"-m tcp --dport {SVC_FRONTEND.split(':')[1]} -j {svc}",
            '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" '
            "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            f"-A KUBE-NODEPORTS -p tcp {comment} -m tcp --dport {NODE_PORT} -j {svc}",
            f"-A {svc} {comment} -j {sep}",
            f"-A {sep} -s {pod_ip}/32 {comment} -j KUBE-MARK-MASQ",
            f"-A {sep} -p tcp {comment} -m tcp -j DNAT --to-destination {pod_ip}:{SERVER_PORT}",
            "COMMIT",
            "",
        ]
    )


def start_plain_node(lab: Lab, underlay: Underlay, flavour: IptFlavour) -> Variant:
    """A node without Porin: a plain routed pod, ip_forward and kube-proxy-style rules."""
    node = lab.netns("node")
    pod = lab.netns("pod")
    underlay.attach(node, flavour.node_ip, EXT_IP)
    gw, pod_ip = f"10.245.{flavour.subnet}.1", f"10.245.{flavour.subnet}.2"
    n, p = ["ip", "-n", node.name], ["ip", "-n", pod.name]
    run(
        [*n, "link", "add", "vpod0", "mtu", "1500", "type", "veth"]
        + ["peer", "name", "eth0", "netns", pod.name]
    )
    run([*n, "addr", "add", f"{gw}/32", "dev", "vpod0"])
    run([*n, "link", "set", "vpod0", "up"])
    run([*n, "route", "add", f"{pod_ip}/32", "dev", "vpod0", "scope", "link"])
    run([*p, "addr", "add", f"{pod_ip}/32", "dev", "eth0"])
    run([*p, "link", "set", "eth0", "up"])
    run([*p, "route", "add", f"{gw}/32", "dev", "eth0", "scope", "link"])
    run([*p, "route", "add", "default", "via", gw, "dev", "eth0"])
    node.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    rules = kube_proxy_rules(f"10.245.{flavour.subnet}.0/24", pod_ip)
    ipt = ["nsenter", f"--net={node.path}", flavour.binary]
    # registered after the netns: flushed (here, never in the root netns) before it goes
    lab.on_close(lambda: (run([*ipt, "-t", "nat", "-F"]), run([*ipt, "-t", "nat", "-X"])))
    run(["nsenter", f"--net={node.path}", f"{flavour.binary}-restore", "--noflush"], input=rules)
    # conntrack TIME_WAIT as long as Porin's closing lifetime (ctLifetimeTCPClose), so the
    # node's conntrack table stays as small as Porin's
    node.exec(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=10"])
    return Variant(flavour.name, pod, flavour.node_ip, flavour)


def start_crr_server(lab: Lab, crr: str, ns: Netns, what: str) -> None:
    proc = lab.spawn(in_ns(ns, [crr, "server", str(SERVER_PORT)]))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise RuntimeError(f"{what}: request/response server did not start: {err}")


def server_clients(crr: str, ns: Netns) -> dict[str, int]:
    """Client addresses the request/response server in `ns` accepted, and how often."""
    out = run(in_ns(ns, [crr, "stats", "127.0.0.1", str(SERVER_PORT)]), timeout=10).stdout
    return {ip: n for ip, n in json.loads(out).items() if not ip.startswith("127.")}


# ---------------------------------------------------------------- tests


@dataclass(frozen=True)
class Test:
    key: str
    title: str
    unit: str


TESTS = [
    Test("masq-crr", "masquerade pod->ext, new conn/s", "conn/s"),
    Test("masq-stream", "masquerade pod->ext, TCP_STREAM", "Gbit/s"),
    Test("np-crr", "NodePort ext->node:30080->pod, new conn/s", "conn/s"),
]


def crr_client(crr: str, ns: Netns, ip: str, port: int, seconds: float) -> dict[str, Any]:
    cmd = in_ns(ns, [crr, "client", ip, str(port), str(seconds)])
    proc = run(cmd, check=False, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"client to {ip}:{port} failed: {proc.stderr[-500:]}")
    res: dict[str, Any] = json.loads(proc.stdout)
    res["rate"] = res["ok"] / max(res["seconds"], 1e-9)
    # one line per failed connection: "failed: local port P: <errno text>"
    res["failures"] = [ln.removeprefix("failed: ") for ln in proc.stderr.splitlines()]
    return res


def iperf(ns: Netns, ip: str, seconds: int, omit: int) -> dict[str, Any]:
    """Bulk throughput (iperf3, receiver side, after `omit` warm-up seconds)."""
    cmd = ["iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", str(omit), "-J"]
    proc = run(in_ns(ns, cmd), check=False, timeout=seconds + omit + 30)
    res = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or "error" in res:
        raise RuntimeError(f"iperf3 to {ip} failed: {res.get('error') or proc.stderr}")
    return {
        "rate": res["end"]["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": res["end"]["sum_sent"].get("retransmits", 0),
    }


@dataclass
class Results:
    # (test key, variant name) -> one value per round
    rate: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    extra: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # wall clock of each round
    competitor_s: list[float] = field(default_factory=list)  # CPU s others pinned to CPU used
    competitors: set[str] = field(default_factory=set)

    def add(self, test: str, variant: str, res: dict[str, Any]) -> None:
        self.rate.setdefault((test, variant), []).append(res["rate"])
        self.extra.setdefault((test, variant), []).append(res)

    def ratios(self, test: str, a: str, b: str) -> list[float]:
        return [
            x / y
            for x, y in zip(self.rate.get((test, a), []), self.rate.get((test, b), []), strict=True)
            if y > 0
        ]

    def failures(self, test: str, variant: str) -> list[str]:
        return [f for r in self.extra.get((test, variant), []) for f in r.get("failures", [])]

    def total(self, test: str, variant: str, what: str) -> int:
        return sum(int(r.get(what, 0)) for r in self.extra.get((test, variant), []))


def crr_target(test: str, v: Variant, ext: Netns) -> tuple[Netns, str, int]:
    """Where the client of a connection-rate test runs and what it connects to."""
    if test == "masq-crr":
        return v.pod_ns, EXT_IP, SERVER_PORT
    return ext, v.node_ip, NODE_PORT


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Slices of one variant in one round as one result."""
    ok, seconds = sum(p["ok"] for p in parts), sum(p["seconds"] for p in parts)
    return {
        "rate": ok / max(seconds, 1e-9),
        "ok": ok,
        "seconds": seconds,
        "errors": sum(p["errors"] for p in parts),
        "stalls": sum(p["stalls"] for p in parts),
        "p50_us": median([p["p50_us"] for p in parts]),
        "p99_us": median([p["p99_us"] for p in parts]),
        "failures": [f for p in parts for f in p["failures"]],
    }


def check_paths(variants: list[Variant], crr: str, ext: Netns, node: Node) -> None:
    """Every path works before anything is timed; a failure names Porin's drops."""
    for v in variants:
        for test, ns, ip, port in (
            ("masquerade", v.pod_ns, EXT_IP, SERVER_PORT),
            ("NodePort", ext, v.node_ip, NODE_PORT),
        ):
            res = crr_client(crr, ns, ip, port, 0.2)
            if res["ok"] == 0 or res["errors"]:
                hint = ""
                if v.ipt is None:
                    hint = (
                        "\nporin metrics list --drops:\n"
                        + node.porin("metrics", "list", "--drops").stdout
                    )
                raise RuntimeError(f"{v.name} {test} path to {ip}:{port} broken: {res}{hint}")


def measure(
    variants: list[Variant],
    crr: str,
    ext: Netns,
    rounds: int,
    crr_s: float,
    slices: int,
    stream_s: int,
    omit: int,
    log: Callable[[str], None],
    ours: set[int],
) -> Results:
    """`rounds` rounds; in each, every variant runs every test. A connection-rate test
    is cut into `slices` runs per variant in palindromic order (ABC CBA ABC ...), so
    load that comes and goes during a round hits every variant alike; TCP_STREAM runs
    once per variant. The variant that leads rotates from round to round."""
    res = Results()
    for i in range(rounds):
        k = i % len(variants)
        order = variants[k:] + variants[:k]
        res.orders.append([v.name for v in order])
        t0, pinned0 = time.monotonic(), pinned_cpu_time(ours)
        for t in TESTS:
            if t.key == "masq-stream":
                for v in order:
                    res.add(t.key, v.name, iperf(v.pod_ns, EXT_IP, stream_s, omit))
                continue
            parts: dict[str, list[dict[str, Any]]] = {v.name: [] for v in order}
            for j in range(slices):
                for v in order if j % 2 == 0 else order[::-1]:
                    ns, ip, port = crr_target(t.key, v, ext)
                    parts[v.name].append(crr_client(crr, ns, ip, port, crr_s / slices))
            for v in order:
                res.add(t.key, v.name, combine(parts[v.name]))
        pinned1 = pinned_cpu_time(ours)
        res.round_s.append(time.monotonic() - t0)
        used = {p: pinned1[p][1] - pinned0[p][1] for p in pinned0.keys() & pinned1.keys()}
        res.competitor_s.append(sum(used.values()))
        res.competitors |= {pinned1[p][0] for p, sec in used.items() if sec > 0.05}
        line = []
        for t in TESTS:
            vals = " ".join(
                f"{v.name} {fmt_value(res.rate[(t.key, v.name)][-1], t.unit)}" for v in variants
            )
            line.append(f"{t.key}: {vals}")
        log(f"  round {i + 1}/{rounds} ({order[0].name} first): " + "; ".join(line))
    return res


# ---------------------------------------------------------------- Porin state


def porin_counters(node: Node) -> dict[tuple[str, str, bool], int]:
    """Packets by (reason, direction, drop) from Porin's metrics map."""
    return {
        (r["reason"], r["direction"], bool(r["drop"])): int(r["packets"])
        for r in node.porin_json("metrics", "list")
    }


def counter_delta(
    before: dict[tuple[str, str, bool], int], after: dict[tuple[str, str, bool], int]
) -> dict[tuple[str, str, bool], int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def nat_half_mappings(nat: list[dict[str, Any]]) -> tuple[int, int]:
    """(OUT entries whose IN entry is missing, IN entries whose OUT entry is missing).

    OUT: pod:sport -> peer:dport leaves as xlate_addr:xlate_port (the node);
    IN:  peer:sport -> node:dport goes back to xlate_addr:xlate_port (the pod)."""
    out_keys, in_keys = set(), set()
    out_wants, in_wants = [], []
    for t in nat:
        if t["direction"] == "OUT":
            out_keys.add((t["proto"], t["src"], t["sport"], t["dst"], t["dport"]))
            in_wants.append((t["proto"], t["dst"], t["dport"], t["xlate_addr"], t["xlate_port"]))
        else:
            in_keys.add((t["proto"], t["src"], t["sport"], t["dst"], t["dport"]))
            out_wants.append((t["proto"], t["xlate_addr"], t["xlate_port"], t["src"], t["sport"]))
    return (
        sum(1 for k in in_wants if k not in in_keys),
        sum(1 for k in out_wants if k not in out_keys),
    )


# ---------------------------------------------------------------- report


def fmt_value(v: float, unit: str) -> str:
    if v != v:
        return "-"
    return f"{v:.2f}" if unit == "Gbit/s" else f"{v:,.0f}"


def fmt_ratio(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):.3f}x [{min(values):.2f}-{max(values):.2f}]"


def summary_rows(res: Results, names: list[str]) -> tuple[list[list[str]], bool]:
    rows, ok_all = [], True
    ipts = [n for n in names if n != "porin"]
    for t in TESTS:
        cells = [f"{t.title} ({t.unit})"]
        cells += [fmt_value(median(res.rate.get((t.key, n), [])), t.unit) for n in names]
        ok = True
        for n in ipts:
            r = res.ratios(t.key, "porin", n)
            cells.append(fmt_ratio(r))
            ok = ok and bool(r) and median(r) >= RATIO_TARGET
        cells.append("PASS" if ok else "FAIL")
        ok_all = ok_all and ok
        rows.append(cells)
    return rows, ok_all


def print_rounds(res: Results, names: list[str]) -> None:
    rows = []
    for i, order in enumerate(res.orders):
        for t in TESTS:
            rows.append(
                [str(i + 1), t.key, order[0]]
                + [fmt_value(res.rate[(t.key, n)][i], t.unit) for n in names]
                + [f"{res.ratios(t.key, 'porin', n)[i]:.3f}" for n in names if n != "porin"]
            )
    ratio_cols = [f"porin/{n}" for n in names if n != "porin"]
    header = ["round", "test", "first", *names, *ratio_cols]
    print(fmt_table(header, rows, set(range(3, len(header)))))


def print_latency(res: Results, names: list[str]) -> None:
    rows = []
    for t in TESTS:
        for n in names:
            ex = res.extra.get((t.key, n), [])
            if t.unit == "conn/s":
                p50 = median([r["p50_us"] for r in ex])
                p99 = median([r["p99_us"] for r in ex])
                detail = f"p50 {p50:.0f} us, p99 {p99:.0f} us per connection"
                errs = (
                    f"{res.total(t.key, n, 'errors')} errors, "
                    f"{res.total(t.key, n, 'stalls')} stalls"
                )
            else:
                detail = f"{res.total(t.key, n, 'retransmits')} retransmits (all rounds)"
                errs = "-"
            rows.append([t.key, n, detail, errs])
    print(fmt_table(["test", "variant", "median over rounds", "failures"], rows, set()))


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def timed(log: Callable[[str], None], what: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    log(f"{what} ({time.monotonic() - t0:.1f}s)")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every target is met, 1 when not, 130 when interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 short rounds")
    ap.add_argument("--rounds", type=int, help="interleaved rounds [7; quick 2]")
    ap.add_argument("--seconds", type=float, help="seconds per connection-rate test [2; quick 1]")
    ap.add_argument("--slices", type=int, help="runs per conn-rate test and round [4; quick 2]")
    ap.add_argument("--stream-seconds", type=int, help="iperf3 -t [3; quick 1]")
    ap.add_argument(
        "--iptables",
        choices=["legacy", "nft", "both"],
        default="both",
        help="which iptables backend(s) the plain nodes use [both]",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_host.py needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 7)
    crr_s = args.seconds or (1.0 if args.quick else 2.0)
    slices = args.slices or (2 if args.quick else 4)
    stream_s = args.stream_seconds or (1 if args.quick else 3)
    omit = 0 if args.quick else 1
    flavours = [
        IPT_FLAVOURS[f] for f in (["legacy", "nft"] if args.iptables == "both" else [args.iptables])
    ]
    mode = "quick" if args.quick else "full"
    signal.signal(signal.SIGINT, Signals.handler)
    signal.signal(signal.SIGTERM, Signals.handler)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    started = time.monotonic()
    load_start = loadavg()
    problems: list[str] = []
    lab = Lab()
    res = Results()
    info: dict[str, Any] = {}
    names = ["porin", *(f.name for f in flavours)]
    th: threading.Thread | None = None
    try:
        workdir = tempfile.mkdtemp(prefix="porin-bench-host-")
        lab.on_close(lambda: shutil.rmtree(workdir, ignore_errors=True))
        lab.track(workdir)
        crr = build_crr(workdir)
        log(f"{mode} run, {os.cpu_count()} CPUs; building the node network")
        underlay = Underlay(subnet=UNDERLAY)
        lab.on_close(underlay.close)
        lab.track(underlay.ns.path)
        ext = lab.netns("ext")
        underlay.attach(ext, EXT_IP)

        # the agent compiles its datapath while the plain nodes are built
        porin_box: dict[str, Any] = {}

        def porin_thread() -> None:
            try:
                porin_box["v"] = start_porin_node(lab, underlay)
            except BaseException as e:  # re-raised by the main thread
                porin_box["e"] = e

        with timed(log, "porin node (agent, pod via CNI, NodePort service) and plain nodes up"):
            th = threading.Thread(target=porin_thread, daemon=True)
            th.start()
            plain = [start_plain_node(lab, underlay, f) for f in flavours]
            while th.is_alive():
                th.join(0.2)  # short joins: Ctrl-C still reaches the main thread
            if "e" in porin_box:
                raise porin_box["e"]
        node, pod = porin_box["v"]
        porin = Variant("porin", pod.ns, PORIN_NODE_IP)
        variants = [porin, *plain]

        for ns in [ext, *(v.pod_ns for v in variants)]:
            tune_client(ns)
        start_crr_server(lab, crr, ext, "external host")
        lab.spawn(in_ns(ext, ["iperf3", "-s", "-p", str(IPERF_PORT)]))
        for v in variants:
            start_crr_server(lab, crr, v.pod_ns, f"{v.name} pod")
        wait_for(
            lambda: ext.exec(["ss", "-Hltn", f"sport = :{IPERF_PORT}"]).stdout.strip(),
            10,
            "iperf3 server",
        )
        check_paths(variants, crr, ext, node)
        counters_before = porin_counters(node)
        log(
            f"traffic: {rounds} rounds x {len(variants)} variants x (conn rate "
            f"{slices}x{crr_s / slices:g}s, "
            f"TCP_STREAM {stream_s}s{f' +{omit}s warm-up' if omit else ''}, "
            f"NodePort conn rate {slices}x{crr_s / slices:g}s), pinned to CPU {CPU}"
        )
        ticks = cpu_ticks()
        ours = {os.getpid(), *lab.spawned}
        res = measure(variants, crr, ext, rounds, crr_s, slices, stream_s, omit, log, ours)
        info["steal"] = steal_pct(ticks)
        others = [c for c in ticks if c.startswith("cpu") and c not in ("cpu", f"cpu{CPU}")]
        info["idle_busy"] = busy_pct(ticks, others) if others else 0.0

        info["delta"] = counter_delta(counters_before, porin_counters(node))
        nat = node.porin_json("bpf", "nat", "list")
        info["nat"] = nat
        info["status"] = node.porin_json("status")
        info["ext_clients"] = server_clients(crr, ext)
        info["backend_clients"] = {v.name: server_clients(crr, v.pod_ns) for v in variants}
        info["agent_errors"] = [
            ln for ln in node.log().splitlines() if " ERROR " in ln or "Traceback" in ln
        ]
        info["pod_ip"] = pod.ip
    except BaseException:
        if not Signals.interrupted:
            raise
    finally:
        Signals.cleaning = True  # a second Ctrl-C must not cut the clean-up short
        log("removing everything the benchmark created")
        if th is not None:
            th.join()  # the Porin node registers its own clean-up: let it get that far
        lab.close()
        Signals.cleaning = False
        leftovers = lab.leftovers()
        if leftovers:
            print(f"cleanup left behind: {leftovers}", file=sys.stderr)
    if Signals.interrupted:
        done = "some objects are left (above)" if leftovers else "everything created is removed"
        print(f"interrupted; {done}", file=sys.stderr)
        return 130

    print(f"\nPer round (pinned to CPU {CPU}; conn/s and Gbit/s):")
    print_rounds(res, names)
    print("\nConnection latency and failures:")
    print_latency(res, names)

    # what proves the BPF masquerade and NodePort were used
    nat, delta = info["nat"], info["delta"]
    out_n = sum(1 for t in nat if t["direction"] == "OUT")
    to_node = sum(1 for t in nat if t["direction"] == "OUT" and t["xlate_addr"] == PORIN_NODE_IP)
    nat_st = info["status"].get("host", {}).get("nat") or {}
    ext_clients = info["ext_clients"]
    masq = sum(n for (r, d, drop), n in delta.items() if "source translated" in r and not drop)
    rev = sum(n for (r, d, drop), n in delta.items() if "reply to a masqueraded" in r)
    nodeport = sum(n for (r, d, drop), n in delta.items() if "NodePort packet" in r)
    host_in = sum(n for (r, d, drop), n in delta.items() if "not Porin's" in r and d == "ingress")
    drops = {(r, d): n for (r, d, drop), n in delta.items() if drop}
    print("\nPorin node (informational):")
    print(
        f"  porin bpf nat list -o json: {len(nat):,} entries after the masquerade tests "
        f"({out_n:,} OUT, {len(nat) - out_n:,} IN; {to_node:,} OUT translated to "
        f"{PORIN_NODE_IP}); porin status (as of the agent's last GC pass): "
        f"{nat_st.get('entries', '?')}/{nat_st.get('max_entries', '?')}"
    )
    half = nat_half_mappings(nat)
    print(
        f"  NAT consistency: {half[0]} OUT entries without their IN entry (replies to that "
        f"pod port are not translated back), {half[1]} IN entries without their OUT entry"
    )
    if half[0]:
        problems.append(
            f"{half[0]} masquerade mappings have lost their IN entry: every connection from "
            "those pod ports to that peer is answered by the node stack with a RST"
        )
    print(f"  external host's server saw clients: {ext_clients}")
    pod_addrs = [ip for ip in ext_clients if ip.startswith("10.")]
    if ext_clients.get(PORIN_NODE_IP, 0) > 0 and not pod_addrs:
        print(
            f"    -> the Porin pod ({info['pod_ip']}) reached it as the node IP {PORIN_NODE_IP}: "
            "masqueraded (by BPF: the Porin node has no iptables rules)"
        )
    else:
        problems.append(
            f"external server did not see only node IPs as clients: {ext_clients} "
            f"(Porin pod {info['pod_ip']})"
        )
    print(f"  NodePort backends saw clients: {info['backend_clients']}")
    print(
        f"  porin metrics during the rounds: 'source translated to the node address' "
        f"+{masq:,} packets, 'reply to a masqueraded flow' +{rev:,}, "
        f"'NodePort packet delivered' +{nodeport:,}; 'not Porin's: passed to or from the node "
        f"untouched' (ingress: on eth0, not translated) +{host_in:,}"
    )
    if masq == 0:
        problems.append("Porin's masquerade counter did not grow: traffic bypassed the datapath")
    if nodeport == 0:
        problems.append("Porin's NodePort counter did not grow")
    if drops:
        problems.append(f"Porin dropped packets during the rounds: {drops}")
    for n in names:
        for t in TESTS:
            errs, stalls = res.total(t.key, n, "errors"), res.total(t.key, n, "stalls")
            if errs or stalls:
                seen = collections.Counter(res.failures(t.key, n))
                detail = "; ".join(f"{f} (x{c})" for f, c in seen.most_common(4))
                problems.append(
                    f"{n} {t.key}: {errs} failed connections (3 s timeout each), {stalls} "
                    f"connections > 200 ms{f': {detail}' if detail else ''}"
                )
    if info["agent_errors"]:
        problems.append(
            f"agent log has {len(info['agent_errors'])} error lines, first: "
            f"{info['agent_errors'][0]}"
        )

    rows, ok = summary_rows(res, names)
    print(
        f"\nSummary ({mode} run, {len(res.orders)} rounds; medians; ratio = median of same-round "
        "porin/iptables [min-max]):"
    )
    header = ["metric", *names, *(f"porin/{n}" for n in names if n != "porin"), "target"]
    header[-1] = f">= {RATIO_TARGET:g}x"
    print(fmt_table(header, rows, set(range(1, len(names) + 1))))
    print(
        f"  iptables variants: plain node netns, plain routed pod, kube-proxy-style nat rules "
        f"via {', '.join(f.binary for f in flavours)}; conntrack TIME_WAIT 10 s.\n"
        f"  loadavg start {load_start}, end {loadavg()}; CPUs other than {CPU} were "
        f"{info['idle_busy']:.0f}% busy during the rounds (the benchmark leaves them nearly "
        f"idle), hypervisor steal {info['steal']:.0f}%; run took "
        f"{time.monotonic() - started:.0f}s"
    )
    competing = 100.0 * sum(res.competitor_s) / max(1e-9, sum(res.round_s))
    print(
        f"  Other processes pinned to CPU {CPU} (not this benchmark's) used {competing:.0f}% of "
        f"it during the rounds{f' ({sorted(res.competitors)})' if res.competitors else ''}; "
        "a lower bound (short-lived ones are missed). Per round: "
        + ", ".join(
            f"{100 * c / max(1e-9, r):.0f}%"
            for c, r in zip(res.competitor_s, res.round_s, strict=True)
        )
    )
    if info["idle_busy"] > NOISY_PCT or competing > 5:
        print("  WARNING: other processes competed for the machine: the numbers may be noisy")
    if leftovers:
        problems.append(f"clean-up left behind: {leftovers}")
    else:
        print("  clean-up: every namespace, agent, bpffs root and work dir created is gone")
    for p in problems:
        print(f"  PROBLEM: {p}")
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
