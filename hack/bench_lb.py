#!/usr/bin/env python3
"""Service load balancing: Porin's BPF datapath against kube-proxy-style iptables.

One run measures, on lab namespaces only (never the machine's own interfaces
nor the root namespace's iptables):

1. For N services (2 backends each: two real pods of a Porin node running a
   1-byte TCP echo server), on one Porin node per N, all alive at once:
   - porin: a client pod attached through the CNI plugin reaches ClusterIPs
     in 10.96.0.0/16 that from_container load-balances; the N services are
     programmed with one `POST /v1/services/batch`.
   - ipt-legacy / ipt-nft: a client namespace joined to the node namespace
     by a plain veth pair (/32 addresses, kernel routing, no BPF on it); the
     node namespace's nat table holds kube-proxy-style rules (PREROUTING ->
     KUBE-SERVICES -> one rule per service -> KUBE-SVC-* with a 0.5
     `statistic` rule -> KUBE-SEP-* DNAT), loaded with iptables-restore
     --noflush. Frontends: 10.97.0.0/16 (legacy) and 10.98.0.0/16 (nft);
     each table's PREROUTING jump only takes its own client's veth (-i), so
     neither walks the other's rules.
   Measured: new connections/s (connect, 1-byte request/response, close)
   and TCP_RR (1-byte transactions/s on one persistent connection), both to
   the last-added service, and the time to program the N services from
   empty (plus a re-sync: the same N programmed again).
   Method: client and servers pinned to one CPU (agents and this script on
   the others); every (N, path) once per round and test, in an order that
   rotates each round; fresh client namespaces and servers every round;
   medians of same-round ratios and of absolute rates. A second node with
   the same single service (the A/A control) shows how far two identical
   set-ups differ, i.e. what a "within 5%" comparison across nodes can
   resolve. A sampler on another CPU looks for other processes runnable on
   the traffic CPU: runs they disturbed are left out (figures marked * when
   too few clean runs remain), and up to --extra-rounds rounds replace them.
2. BPF_PROG_TEST_RUN cost of an established service flow through the real
   from_container (private bpffs root) next to a minimal tc program
   (Ethernet/IPv4/TCP parse + one hash lookup) compiled here with bcc.

Everything created is removed at exit, also on error, Ctrl-C or SIGTERM.

    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_lb.py           N = 1, 1000, 10000 (~5-7 min)
    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_lb.py --quick   N = 1, 1000 (~1 min)

Exit status: 0 every target met, 1 a target missed or a problem seen, 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import benchlib
from benchlib import (
    CPU,
    busy_pct,
    cpu_ticks,
    loadavg,
    median,
    quietly,
    record,
    steal_pct,
    stop_process,
    tune_client,
)
from porinlab import Netns, Node, Pod, run

from porin.client import AgentClient
from porin.daemon.trace_packet import inet_csum

OTHER_CPUS = ["cpu0"]  # the rest: agents and this script; set with CPU by set_cpu()
FOREIGN_EVERY_S = 0.025  # how often the sampler looks for other processes on CPU
FOREIGN_MAX = 0.05  # a run where another process was runnable on CPU more often is left out
SERVER_PORT = 7777
SVC_PORT = 80
BACKENDS_PER_SERVICE = 2
VIP_NET = {
    "porin": 10 << 24 | 96 << 16,
    "ipt-legacy": 10 << 24 | 97 << 16,
    "ipt-nft": 10 << 24 | 98 << 16,
}
IPT_BINARY = {"ipt-legacy": "iptables-legacy", "ipt-nft": "iptables-nft"}
IPT_SUBNET = {"ipt-legacy": 1, "ipt-nft": 2}  # 10.250.<k>.1 node side, .2 client
# conntrack TIME_WAIT in the node netns: Porin's closing lifetime (ctLifetimeTCPClose),
# so the iptables paths' conntrack table stays as small as Porin's
NF_TIME_WAIT_S = 10
SLOW_RESTORE_S = 20.0  # a restore slower than this is not repeated for the re-sync figure

NEWCONN_VS_IPT_TARGET = 1.2
SCALE_TARGET = 0.95
PROGRAM_TARGET_S = 2.0
UPDATE_TARGET_MS = 10.0  # one service changed among PROGRAM_TARGET_N
UPDATES = 20
PROGRAM_TARGET_N = 10000
BPF_RATIO_TARGET = 3.0

# ---------------------------------------------------------------- traffic programs

# One connection at a time, echo each byte until EOF: serves both tests.
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1024)
print("ready", flush=True)
nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    c, _ = s.accept()
    c.setsockopt(*nodelay)
    recv, send = c.recv, c.send
    try:
        while True:
            b = recv(1)
            if not b:
                break
            send(b)
    except OSError:
        pass
    c.close()
"""

NEWCONN_CLIENT = r"""
import json, socket, sys, time
ip, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
addr, new, clock, msg = (ip, port), socket.socket, time.perf_counter, b"x"
def one():
    s = new()
    try:
        s.connect(addr)
        s.send(msg)
        if s.recv(1) != msg:
            raise ConnectionError("short reply")
    finally:
        s.close()
for _ in range(100):  # warm-up: neighbour entries, caches, scheduler
    one()
n = errors = stalls = 0
start = last = clock()
end = start + duration
while last < end:
    for _ in range(50):
        try:
            one()
        except OSError:
            errors += 1
        now = clock()
        if now - last > 0.2:  # a lost SYN costs a 1 s retransmit
            stalls += 1
        last = now
    n += 50
print(json.dumps({"ok": n - errors, "errors": errors, "stalls": stalls, "seconds": last - start}))
"""

RR_CLIENT = benchlib.RR_CLIENT  # prints "ok"/"errors"/"stalls" too

TESTS = {"conn": NEWCONN_CLIENT, "rr": RR_CLIENT}
TEST_TITLE = {
    "conn": "new connections/s (connect, 1-byte request/response, close)",
    "rr": "TCP_RR transactions/s (1 byte each way, one persistent connection)",
}

# ---------------------------------------------------------------- helpers


def ip_str(value: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", value))


def vip(variant: str, index: int) -> str:
    """Frontend of service `index` (1-based) of a path: 10.9x.<hi>.<lo>."""
    return ip_str(VIP_NET[variant] + index)


def in_ns(ns: Netns, cmd: list[str]) -> list[str]:
    """`cmd` pinned to CPU, run inside `ns` without address-space randomisation.

    nsenter, taskset and setarch all exec. The same program then gets the same memory
    layout in every namespace, one less difference between otherwise identical set-ups
    (which still differ by a few percent: see the A/A control).
    """
    return ["nsenter", f"--net={ns.path}", "taskset", "-c", CPU, "setarch", "-R", *cmd]


def set_cpu(cpu: int) -> None:
    """Run the traffic on `cpu`; everything else of ours goes to the other CPUs."""
    global CPU, OTHER_CPUS
    CPU = str(cpu)
    OTHER_CPUS = [f"cpu{c}" for c in sorted(os.sched_getaffinity(0)) if c != cpu]


def child_env() -> dict[str, str]:
    """Environment of the traffic programs: fixed string hashing, like the fixed layout."""
    return {**os.environ, "PYTHONHASHSEED": "0"}


def fmt_rate(v: float) -> str:
    return "-" if v != v else f"{v:,.0f}"


class Lab(benchlib.Lab):
    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return super().spawn(cmd, env or child_env())


# ---------------------------------------------------------------- one N: node, pods, paths


@dataclass
class Path:
    """One way of reaching the last-added service of a level."""

    variant: str
    client: Netns
    frontend: str


@dataclass
class Level:
    n: int
    node: Node
    label: str  # row name: "1000", or "1 (A/A)" for the control node
    variants: list[str]
    backends: list[Pod] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    client: Pod | None = None  # the Porin client pod
    paths: dict[str, Path] = field(default_factory=dict)
    program_s: dict[str, float] = field(default_factory=dict)  # variant -> seconds
    resync_s: dict[str, float] = field(default_factory=dict)
    update_ms: list[float] = field(default_factory=list)  # one service changed, API round trip
    delete_ms: list[float] = field(default_factory=list)  # one service deleted and put back
    drops: dict[str, int] = field(default_factory=dict)  # reason -> packets
    batch_bytes: int = 0

    @property
    def backend_addrs(self) -> list[str]:
        return [f"{p.ip}:{SERVER_PORT}" for p in self.backends]


def start_agents(nodes: list[Node]) -> None:
    """Start the agents in parallel (each compiles the datapath) and pin them off CPU."""
    errors: list[BaseException] = []

    def start(node: Node) -> None:
        try:
            node.start_agent(timeout=180)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    others = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)) if str(c) != CPU)
    for node in nodes:
        if node.proc is not None and others:
            run(["taskset", "-a", "-p", "-c", others, str(node.proc.pid)])


def restart_servers(lab: Lab, level: Level) -> None:
    """(Re)start the echo server in every backend pod."""
    for proc in level.servers:
        stop_process(proc)
    level.servers = []
    for pod in level.backends:
        proc = lab.spawn(
            in_ns(pod.ns, [sys.executable, "-S", "-c", SERVER, pod.ip, str(SERVER_PORT)])
        )
        level.servers.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            assert proc.stderr is not None
            raise RuntimeError(f"echo server in {pod.ns.name} did not start: {proc.stderr.read()}")


def porin_services(n: int, backends: list[str]) -> list[dict[str, Any]]:
    return [
        {"frontend": f"{vip('porin', i)}:{SVC_PORT}", "backends": backends} for i in range(1, n + 1)
    ]


def program_porin(level: Level, problems: list[str]) -> None:
    """N services in one batch (from empty), then the same batch again (a re-sync)."""
    client = AgentClient(level.node.cfg.socket, timeout=600)
    body = porin_services(level.n, level.backend_addrs)
    size = len(json.dumps(body))
    for what in ("program", "resync"):
        t0 = time.perf_counter()
        res = client.request("POST", "/v1/services/batch", body)
        took = time.perf_counter() - t0
        (level.program_s if what == "program" else level.resync_s)["porin"] = took
        if res.get("programmed") != level.n:
            problems.append(f"N={level.label}: batch {what} answered {res!r:.200}")
    # one change among N: the first service's backends, one and then both again (the
    # traffic tests use the last service); then a delete and the same service back
    sid = res["ids"][0]
    first = body[0]
    for i in range(UPDATES):
        change = {**first, "backends": first["backends"][: 1 if i % 2 == 0 else None]}
        t0 = time.perf_counter()
        client.request("PUT", f"/v1/services/{sid}", change)
        level.update_ms.append((time.perf_counter() - t0) * 1000)
    for _ in range(UPDATES // 4):
        t0 = time.perf_counter()
        client.request("DELETE", f"/v1/services/{sid}")
        level.delete_ms.append((time.perf_counter() - t0) * 1000)
        client.request("PUT", f"/v1/services/{sid}", first)
    status = client.get("/v1/status")
    if status.get("services") != level.n:
        problems.append(f"N={level.label}: agent lists {status.get('services')} services")
    level.batch_bytes = size


def _chain(kind: str, *parts: str) -> str:
    """kube-proxy's chain names: KUBE-SVC-/KUBE-SEP- + 16 base32 chars of a sha256."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return f"KUBE-{kind}-" + base64.b32encode(digest).decode()[:16]


def kube_proxy_rules(variant: str, n: int, backends: list[str]) -> str:
    """The nat table as kube-proxy writes it with --noflush: chains, then rules."""
    chains = [":KUBE-SERVICES - [0:0]"]
    rules = []
    for i in range(1, n + 1):
        name = f"bench/svc-{i}:http"
        svc = _chain("SVC", name, "tcp")
        seps = [_chain("SEP", name, "tcp", b) for b in backends]
        chains.append(f":{svc} - [0:0]")
        chains += [f":{s} - [0:0]" for s in seps]
        rules.append(
            f"-A KUBE-SERVICES -d {vip(variant, i)}/32 -p tcp -m tcp --dport {SVC_PORT} -j {svc}"
        )
        for j, sep in enumerate(seps):
            if j < len(seps) - 1:
                p = 1.0 / (len(seps) - j)  # 0.5 of 2, then the last one takes the rest
                rules.append(f"-A {svc} -m statistic --mode random --probability {p:.11f} -j {sep}")
            else:
                rules.append(f"-A {svc} -j {sep}")
        for sep, b in zip(seps, backends, strict=True):
            rules.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {b}")
    return "\n".join(["*nat", *chains, *rules, "COMMIT", ""])


def ipt_restore(node: Node, variant: str, text: str) -> float:
    """Seconds for `<iptables>-restore --noflush` of `text` in the node netns."""
    cmd = ["nsenter", f"--net={node.ns.path}", f"{IPT_BINARY[variant]}-restore", "-w", "--noflush"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[-3]} failed: {proc.stderr.strip()[:500]}")
    return took


def ipt_host_if(variant: str) -> str:
    return f"ipt{IPT_SUBNET[variant]}"


def ipt_client(lab: Lab, node: Node, variant: str) -> Netns:
    """A client netns joined to the node by a plain veth: /32s, routes, no BPF."""
    k = IPT_SUBNET[variant]
    gw, ip, host_if = f"10.250.{k}.1", f"10.250.{k}.2", ipt_host_if(variant)
    ns = lab.netns("ipt")
    n = ["ip", "-n", node.ns.name]
    run([*n, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name])
    run([*n, "addr", "add", f"{gw}/32", "dev", host_if])
    run([*n, "link", "set", host_if, "up"])
    run([*n, "route", "add", f"{ip}/32", "dev", host_if, "scope", "link"])
    c = ["ip", "-n", ns.name]
    run([*c, "addr", "add", f"{ip}/32", "dev", "eth0"])
    run([*c, "link", "set", "eth0", "up"])
    run([*c, "route", "add", f"{gw}/32", "dev", "eth0", "scope", "link"])
    run([*c, "route", "add", "default", "via", gw, "dev", "eth0"])
    tune_client(ns)
    return ns


def program_ipt(level: Level, variant: str) -> None:
    """kube-proxy rules for N services in the node netns, timed; then the re-sync."""
    node = level.node
    # the jump from PREROUTING, only for this path's client veth (not timed)
    jump = f"-A PREROUTING -i {ipt_host_if(variant)} -j KUBE-SERVICES"
    ipt_restore(node, variant, f"*nat\n:KUBE-SERVICES - [0:0]\n{jump}\nCOMMIT\n")
    text = kube_proxy_rules(variant, level.n, level.backend_addrs)
    level.program_s[variant] = ipt_restore(node, variant, text)
    if level.program_s[variant] < SLOW_RESTORE_S:  # iptables-nft at 10000: ~1 min each
        level.resync_s[variant] = ipt_restore(node, variant, text)


def new_clients(lab: Lab, level: Level) -> None:
    """A fresh client namespace for every path of a level (the Porin one through CNI).

    Done before every round (with restart_servers), so that whatever placement one
    namespace or process happened to get does not stick to one path for the whole run.
    """
    node = level.node
    if level.client is not None:
        node.del_pod(level.client)
        level.client = None
    level.client = node.add_pod()
    tune_client(level.client.ns)
    level.paths["porin"] = Path("porin", level.client.ns, f"{vip('porin', level.n)}:{SVC_PORT}")
    for v in level.variants:
        if v == "porin":
            continue
        old = level.paths.pop(v, None)
        if old is not None:
            run(["ip", "-n", node.ns.name, "link", "del", ipt_host_if(v)], check=False)
            old.client.close()
        ns = ipt_client(lab, node, v)
        level.paths[v] = Path(v, ns, f"{vip(v, level.n)}:{SVC_PORT}")


def build_level(lab: Lab, level: Level, problems: list[str]) -> None:
    node = level.node
    node.ns.exec(
        ["sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_time_wait={NF_TIME_WAIT_S}"]
    )
    level.backends = [node.add_pod() for _ in range(BACKENDS_PER_SERVICE)]
    restart_servers(lab, level)
    program_porin(level, problems)
    for v in level.variants:
        if v != "porin":
            program_ipt(level, v)
    new_clients(lab, level)
    for path in level.paths.values():  # every path reaches its last-added service
        res = run_client(path, "conn", 0.05)
        if res["ok"] <= 0:
            raise RuntimeError(f"N={level.label} {path.variant}: {path.frontend} unreachable")


def run_client(
    path: Path, test: str, seconds: float, sampler: ForeignLoad | None = None
) -> dict[str, Any]:
    """One client run; with a sampler, also the share of samples where another process
    was runnable on CPU while it ran ("foreign")."""
    ip, port = path.frontend.split(":")
    cmd = [sys.executable, "-S", "-c", TESTS[test], ip, port, str(seconds)]
    proc = subprocess.Popen(
        in_ns(path.client, cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    if sampler is not None:
        sampler.client = proc.pid  # nsenter, taskset and setarch exec: same pid
        before = sampler.counts()
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{path.variant} {test} client to {path.frontend}: {err[-500:]}")
    res = json.loads(out)
    if sampler is not None:
        samples, hits = (a - b for a, b in zip(sampler.counts(), before, strict=True))
        res["foreign"] = hits / max(1, samples)
    return res


class ForeignLoad:
    """Looks, from another CPU, for runnable tasks on CPU that are not this benchmark's.

    Other work on the machine shows up here even when it is pinned to the same CPU
    (busy time of the other CPUs and steal time miss that case).
    """

    PF_KTHREAD = 0x00200000

    def __init__(self) -> None:
        self.ours: set[int] = set()  # servers, this process
        self.client = 0
        self._samples = 0
        self._hits = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._samples, self._hits

    def _run(self) -> None:
        os.sched_setaffinity(0, {int(c.removeprefix("cpu")) for c in OTHER_CPUS})
        while not self._done.wait(FOREIGN_EVERY_S):
            hit = self._foreign_runnable()
            with self._lock:
                self._samples += 1
                self._hits += hit

    def _foreign_runnable(self) -> bool:
        ours = self.ours | {self.client, os.getpid()}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in ours:
                continue
            try:
                tasks = os.listdir(f"/proc/{name}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{name}/task/{task}/stat", "rb") as f:
                        raw = f.read()
                except OSError:
                    continue
                rest = raw[raw.rfind(b")") + 2 :].split()  # field n is rest[n - 3]
                if (
                    rest[0] == b"R"
                    and rest[36] == CPU.encode()
                    and not int(rest[6]) & self.PF_KTHREAD
                ):
                    return True
        return False


# ---------------------------------------------------------------- rounds


Key = tuple[str, str, str]  # (test, level label, variant)


@dataclass
class Round:
    results: dict[Key, dict[str, Any]]  # client output plus "foreign"
    other_busy: float  # % busy of OTHER_CPUS
    steal: float  # % of CPU taken by the hypervisor


def rate(res: dict[str, Any]) -> float:
    return res["ok"] / res["seconds"]


def undisturbed(res: dict[str, Any]) -> bool:
    return res.get("foreign", 0.0) <= FOREIGN_MAX


@dataclass
class Series:
    """Rates or same-round ratios; `clean` is False when too few undisturbed runs
    (runs during which no other process competed for CPU) existed and all were used."""

    values: list[float]
    clean: bool

    @property
    def median(self) -> float:
        return median(self.values)

    def rate(self) -> str:
        if not self.values:
            return "-"
        return fmt_rate(self.median) + ("" if self.clean else "*")

    def ratio(self) -> str:
        if not self.values:
            return "-"
        mark = "" if self.clean else "*"
        return f"{self.median:.2f} [{min(self.values):.2f}-{max(self.values):.2f}]{mark}"


@dataclass
class Samples:
    """Every run of every round; figures come from the undisturbed runs."""

    rounds: list[Round]
    min_clean: int  # fewer undisturbed runs than this: use all runs, marked *

    def runs(self, key: Key) -> list[dict[str, Any]]:
        return [r.results[key] for r in self.rounds if key in r.results]

    def clean_runs(self, key: Key) -> int:
        return sum(undisturbed(x) for x in self.runs(key))

    def rates(self, key: Key) -> Series:
        runs = self.runs(key)
        ok = [rate(x) for x in runs if undisturbed(x)]
        if len(ok) >= self.min_clean:
            return Series(ok, True)
        return Series([rate(x) for x in runs], False)

    def ratios(self, a: Key, b: Key) -> Series:
        """Same-round ratios a/b, from rounds where both runs were undisturbed."""
        pairs = [
            (r.results[a], r.results[b]) for r in self.rounds if a in r.results and b in r.results
        ]
        pairs = [(x, y) for x, y in pairs if rate(y) > 0]
        ok = [rate(x) / rate(y) for x, y in pairs if undisturbed(x) and undisturbed(y)]
        if len(ok) >= self.min_clean:
            return Series(ok, True)
        return Series([rate(x) / rate(y) for x, y in pairs], False)

    def failures(self) -> dict[Key, tuple[int, int]]:
        """(failed connections, stalls) per key, over every run."""
        out: dict[Key, tuple[int, int]] = {}
        for r in self.rounds:
            for key, res in r.results.items():
                e, st = out.get(key, (0, 0))
                out[key] = (e + res["errors"], st + res["stalls"])
        return out


def measure(
    lab: Lab,
    levels: list[Level],
    rounds: int,
    extra: int,
    seconds: float,
    log: Callable[[str], None],
) -> Samples:
    """Every (level, path) once per round and test, in an order that rotates each round.

    While some (test, level, path) has fewer than `rounds` runs that no other process
    disturbed, up to `extra` more rounds are run.
    """
    combos = [(lv, v) for lv in levels for v in lv.variants]  # paths alternate
    keys = [(t, lv.label, v) for t in TESTS for lv, v in combos]
    samples = Samples(rounds=[], min_clean=min(3, rounds))
    sampler = ForeignLoad()
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c.removeprefix("cpu")) for c in OTHER_CPUS})
    sampler.start()
    try:
        r = 0
        while r < rounds or (
            r < rounds + extra and min(samples.clean_runs(k) for k in keys) < rounds
        ):
            if r:  # fresh clients and servers each round (round 0 has build_level's)
                for lv in levels:
                    new_clients(lab, lv)
                    restart_servers(lab, lv)
            sampler.ours = {p.pid for lv in levels for p in lv.servers}
            order = combos[r % len(combos) :] + combos[: r % len(combos)]
            if r % 2:
                order.reverse()
            before = cpu_ticks()
            results: dict[Key, dict[str, Any]] = {}
            for test in TESTS:
                for lv, v in order:
                    results[(test, lv.label, v)] = run_client(lv.paths[v], test, seconds, sampler)
            samples.rounds.append(
                Round(
                    results,
                    other_busy=busy_pct(before, OTHER_CPUS),
                    steal=steal_pct(before, f"cpu{CPU}"),
                )
            )
            r += 1
            summary = "  ".join(
                f"{lv.label} {v} {rate(results[('conn', lv.label, v)]):,.0f}/"
                f"{rate(results[('rr', lv.label, v)]):,.0f}"
                for lv, v in combos
            )
            bad = sum(not undisturbed(x) for x in results.values())
            worst = max(x["foreign"] for x in results.values())
            log(
                f"round {r}: {bad} of {len(results)} runs disturbed (other processes runnable "
                f"on CPU{CPU} in up to {100 * worst:.0f}% of samples); conn/s / RR/s: {summary}"
            )
    finally:
        sampler.stop()
        os.sched_setaffinity(0, home)
    return samples


# ---------------------------------------------------------------- BPF_PROG_TEST_RUN

# the yardstick programs: parse + one hash lookup, and nothing
MINIMAL_TC = pathlib.Path(__file__).resolve().parent / "progs" / "minimal_tc.c"

TC_ACT_OK = 0
TC_ACT_REDIRECT = 7
MB_VIP = "10.96.0.10"
MB_CLIENT = ("10.244.0.10", "02:00:00:00:00:0a", "02:aa:00:00:00:0a")  # ip, mac, host-veth mac
MB_BACKEND = ("10.244.0.11", "02:00:00:00:00:0b", "02:aa:00:00:00:0b")
MB_SPORT, MB_BPORT = 40000, 8080
CHUNKS = 5


def tcp_frame(
    src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, flags: int
) -> bytes:
    """Ethernet/IPv4/TCP frame with valid checksums (flags: 0x02 SYN, 0x10 ACK)."""
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 1, 5 << 4, flags, 65535, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", inet_csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", inet_csum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return eth + b"\x08\x00" + ip + tcp


@dataclass
class BpfResult:
    samples: int
    lxc_ns: float  # from_container, established service flow, median of repeat=1 runs
    p2p_ns: float  # from_container, established pod-to-pod flow (no service), same method
    minimal_ns: float  # minimal program, same method
    empty_ns: float  # empty program, same method: timer + run overhead
    minimal_loop_ns: float  # minimal program, one run with repeat=N
    empty_loop_ns: float
    naive_lxc_loop_ns: float  # from_container with repeat=N (see note)
    naive_paths: dict[str, int]
    repeat: int

    @property
    def raw_ratio(self) -> float:
        """The two ns/packet figures BPF_PROG_TEST_RUN reports, side by side (the target)."""
        return self.lxc_ns / max(1e-9, self.minimal_ns)

    @property
    def net_ratio(self) -> float:
        """The same with the harness's fixed cost per call (the empty program) taken out
        of both: what the programs alone cost."""
        return (self.lxc_ns - self.empty_ns) / max(1e-9, self.minimal_ns - self.empty_ns)

    @property
    def loop_ratio(self) -> float:
        """As if from_container could run with repeat=N like the minimal program: its
        program time plus the per-run overhead of a loop, against the minimal's loop."""
        lxc = self.lxc_ns - self.empty_ns + self.empty_loop_ns
        return lxc / max(1e-9, self.minimal_loop_ns)


def bpf_microbench(samples: int, repeat: int, log: Callable[[str], None]) -> BpfResult:
    from bcc import BPF

    from porin.daemon.config import AgentConfig
    from porin.daemon.datapath import compile_programs
    from porin.daemon.services import LbMaps, ServiceManager
    from porin.maps import syscall
    from porin.maps.endpoints import EndpointEntry, EndpointsMap
    from porin.maps.metrics import MetricsMap
    from porin.models import Backend, Service

    root = f"/sys/fs/bpf/plbench-{uuid.uuid4().hex[:8]}"
    state = tempfile.mkdtemp(prefix="plbench-")
    modules: list[Any] = []
    affinity = os.sched_getaffinity(0)
    try:
        module, progs = compile_programs(
            "bpf_lxc.c", AgentConfig(bpffs_root=root), ["from_container"]
        )
        modules.append(module)
        mini = BPF(text=MINIMAL_TC.read_bytes())
        modules.append(mini)
        fd_lxc = progs["from_container"].fd
        fd_min = mini.load_func(b"minimal", BPF.SCHED_CLS).fd
        fd_empty = mini.load_func(b"empty", BPF.SCHED_CLS).fd

        endpoints = EndpointsMap(root)
        client_ip, client_mac, client_host = MB_CLIENT
        backend_ip, backend_mac, backend_host = MB_BACKEND

        def sender(is_client: bool) -> None:
            """BPF_PROG_TEST_RUN runs with ifindex 1: the sender sits on it."""
            endpoints.upsert(
                EndpointEntry(client_ip, 1 if is_client else 76, 10, client_mac, client_host)
            )
            endpoints.upsert(
                EndpointEntry(backend_ip, 77 if is_client else 1, 11, backend_mac, backend_host)
            )

        services = ServiceManager(LbMaps.open(root), state)
        services.upsert(
            Service(id=1, ip=MB_VIP, port=SVC_PORT, backends=[Backend(backend_ip, MB_BPORT)])
        )
        syn = tcp_frame(client_mac, client_host, client_ip, MB_VIP, MB_SPORT, SVC_PORT, 0x02)
        synack = tcp_frame(
            backend_mac, backend_host, backend_ip, client_ip, MB_BPORT, MB_SPORT, 0x12
        )
        ack = tcp_frame(client_mac, client_host, client_ip, MB_VIP, MB_SPORT, SVC_PORT, 0x10)
        sender(True)
        ret, _, _ = syscall.prog_test_run(fd_lxc, syn)
        sender(False)
        ret2, _, _ = syscall.prog_test_run(fd_lxc, synack)
        sender(True)
        ret3, out, _ = syscall.prog_test_run(fd_lxc, ack)
        if (ret, ret2, ret3) != (TC_ACT_REDIRECT,) * 3 or out[30:34] != socket.inet_aton(
            backend_ip
        ):
            raise RuntimeError(f"from_container: SYN/SYN-ACK/ACK gave {ret}/{ret2}/{ret3}")

        key = mini["flows"].Key()
        key.saddr = struct.unpack("=I", socket.inet_aton(client_ip))[0]
        key.daddr = struct.unpack("=I", socket.inet_aton(MB_VIP))[0]
        key.sport = socket.htons(MB_SPORT)
        key.dport = socket.htons(SVC_PORT)
        key.proto = socket.IPPROTO_TCP
        mini["flows"][key] = mini["flows"].Leaf(1)
        if syscall.prog_test_run(fd_min, ack)[0] != TC_ACT_OK:
            raise RuntimeError("minimal program missed its flow entry")

        # the same client to the backend directly: pod-to-pod, no service
        direct = [
            tcp_frame(client_mac, client_host, client_ip, backend_ip, MB_SPORT + 1, MB_BPORT, f)
            for f in (0x02, 0x10)
        ]
        direct_synack = tcp_frame(
            backend_mac, backend_host, backend_ip, client_ip, MB_BPORT, MB_SPORT + 1, 0x12
        )
        got = [syscall.prog_test_run(fd_lxc, direct[0])[0]]
        sender(False)
        got.append(syscall.prog_test_run(fd_lxc, direct_synack)[0])
        sender(True)
        if got != [TC_ACT_REDIRECT] * 2:
            raise RuntimeError(f"from_container: direct SYN/SYN-ACK gave {got}")
        direct_ack = direct[1]

        os.sched_setaffinity(0, {int(CPU)})

        # the programs take turns in short stretches: each stays hot in the caches as it
        # would on a busy CPU (a call-by-call rotation would measure cold caches), and
        # drift hits all four alike, so the difference of two medians stays meaningful
        progs = {
            "lxc": (fd_lxc, ack, TC_ACT_REDIRECT),
            "p2p": (fd_lxc, direct_ack, TC_ACT_REDIRECT),
            "min": (fd_min, ack, TC_ACT_OK),
            "empty": (fd_empty, ack, TC_ACT_OK),
        }
        durations: dict[str, list[int]] = {k: [] for k in progs}
        stretch = 250
        for _ in range(max(1, samples * CHUNKS // stretch)):
            for name, (fd, frame, want) in progs.items():
                for _ in range(stretch):
                    r, _, d = syscall.prog_test_run(fd, frame)
                    if r != want:
                        raise RuntimeError(f"{name}: program returned {r}, expected {want}")
                    durations[name].append(d)
        runs = {k: [float(statistics.median(v))] for k, v in durations.items()}
        minimal_loop = median(
            [syscall.prog_test_run(fd_min, ack, repeat=repeat)[2] for _ in range(CHUNKS)]
        )
        empty_loop = median(
            [syscall.prog_test_run(fd_empty, ack, repeat=repeat)[2] for _ in range(CHUNKS)]
        )

        # What repeat=N does to from_container: every run after the first sees the frame the
        # previous run rewrote (backend address and MACs, TTL one lower).
        metrics = MetricsMap(root)
        before = {(m.reason_text, m.direction): m.packets for m in metrics.metrics()}
        naive = float(syscall.prog_test_run(fd_lxc, ack, repeat=repeat)[2])
        paths = {}
        for m in metrics.metrics():
            delta = m.packets - before.get((m.reason_text, m.direction), 0)
            if delta:
                paths[m.reason_text] = delta
        log(f"BPF_PROG_TEST_RUN: {samples * CHUNKS} single runs per program")
        return BpfResult(
            samples=samples * CHUNKS,
            lxc_ns=median(runs["lxc"]),
            p2p_ns=median(runs["p2p"]),
            minimal_ns=median(runs["min"]),
            empty_ns=median(runs["empty"]),
            minimal_loop_ns=minimal_loop,
            empty_loop_ns=empty_loop,
            naive_lxc_loop_ns=naive,
            naive_paths=paths,
            repeat=repeat,
        )
    finally:
        os.sched_setaffinity(0, affinity)
        for m in reversed(modules):
            quietly(m.cleanup)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------- report


def check_node(level: Level, problems: list[str]) -> None:
    """Datapath drops, a dead agent, errors in its log."""
    from porin.maps.metrics import MetricsMap

    node, name = level.node, f"N={level.label}"
    if node.proc is None or node.proc.poll() is not None:
        problems.append(f"{name}: porin-agent is not running")
    with MetricsMap(node.cfg.bpffs_root) as m:
        for x in m.metrics():
            if x.is_drop and x.packets:
                level.drops[x.reason_text] = x.packets
                problems.append(f"{name}: datapath dropped {x.packets} packets: {x.reason_text}")
    bad = [ln for ln in node.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
    if bad:
        problems.append(f"{name}: agent log: {bad[0][:200]}")


def report(
    levels: list[Level],
    samples: Samples,
    bpf: BpfResult | None,
    problems: list[str],
    args: argparse.Namespace,
    elapsed: float,
) -> bool:
    """Print the tables and the targets; True when every target is met and nothing went wrong."""
    main_levels = [lv for lv in levels if lv.label == str(lv.n)]
    control = next((lv for lv in levels if lv not in main_levels), None)
    variants = main_levels[0].variants
    ipts = [v for v in variants if v != "porin"]
    base = main_levels[0].label
    w = 9  # label column
    printed: list[str] = []

    def p(line: str = "") -> None:
        printed.append(line)
        print(line)

    p()
    p("=" * 110)
    p(
        f"Service load balancing: Porin BPF vs kube-proxy-style iptables, {BACKENDS_PER_SERVICE} "
        f"backends per service, traffic to the last-added service, one node per N"
    )
    p(
        f"{len(samples.rounds)} rounds x {args.seconds:g} s per (test, N, path); client and "
        f"servers pinned to CPU {CPU}; rates: median; ratios: median [min-max] of same-round "
        f"ratios; runs during which another process competed for CPU {CPU} left out"
    )
    for test in TESTS:
        p()
        p(TEST_TITLE[test])
        head = f"{'N':>{w}} " + "".join(f"{v:>12}" for v in variants)
        head += "".join(f"  {'porin/' + v.removeprefix('ipt-'):>18}" for v in ipts)
        head += f"  {'porin N/porin ' + base:>18}"
        p(head)
        for lv in main_levels + ([control] if control else []):
            row = f"{lv.label:>{w}} " + "".join(
                f"{samples.rates((test, lv.label, v)).rate():>12}" for v in variants
            )
            for v in ipts:
                r = samples.ratios((test, lv.label, "porin"), (test, lv.label, v))
                row += f"  {r.ratio():>18}"
            if lv.label != base:
                scale = samples.ratios((test, lv.label, "porin"), (test, base, "porin"))
                row += f"  {scale.ratio():>18}"
            p(row)
        for v in ipts:
            scale = [
                f"N={lv.label}: {samples.ratios((test, lv.label, v), (test, base, v)).ratio()}"
                for lv in main_levels[1:]
            ]
            if scale:
                p(f"{'':>{w}} {v} N/{v} {base}: " + ", ".join(scale))
    if control:
        p(
            f"{'':>{w}} {control.label}: a second node with the same 1 service, Porin path only: "
            f"its ratio to N={base} is the setup-to-setup spread"
        )

    p()
    p("programming N services from empty (s); re-sync: the same N services programmed again")
    p(
        f"{'N':>{w}} {'porin batch API':>16} {'re-sync':>8}"
        + "".join(f" {IPT_BINARY[v] + '-restore':>24} {'re-sync':>8}" for v in ipts)
        + f" {'batch body':>11} {'1 update ms':>12} {'1 delete ms':>12}"
    )

    def secs(d: dict[str, float], v: str) -> str:
        return f"{d[v]:.3f}" if v in d else "-"

    for lv in main_levels:
        record(f"program N={lv.label} s", lv.program_s["porin"])
        record(f"one update at N={lv.label} ms", statistics.median(lv.update_ms))
        record(f"one delete at N={lv.label} ms", statistics.median(lv.delete_ms))
        for test in TESTS:
            rates = samples.rates((test, lv.label, "porin"))
            if rates.values:
                record(f"{test} rate N={lv.label}", rates.median)
        row = f"{lv.label:>{w}} {secs(lv.program_s, 'porin'):>16} {secs(lv.resync_s, 'porin'):>8}"
        row += "".join(f" {secs(lv.program_s, v):>24} {secs(lv.resync_s, v):>8}" for v in ipts)
        row += f" {lv.batch_bytes / 1024:>7.0f} KiB"
        row += f" {statistics.median(lv.update_ms):>12.2f} {statistics.median(lv.delete_ms):>12.2f}"
        p(row)
    if any(v in lv.program_s and v not in lv.resync_s for lv in main_levels for v in ipts):
        p(f"{'':>{w}} (re-sync not repeated when the first restore took over {SLOW_RESTORE_S:g} s)")

    if bpf is not None:
        p()
        p(
            f"BPF_PROG_TEST_RUN, established TCP flow (ACK, 54 bytes), median of {bpf.samples} "
            f"single runs per program, taking turns 250 runs at a time (each run gets a fresh "
            f"copy of the frame)"
        )
        record("bpf service flow ns", bpf.lxc_ns)
        record("bpf pod-to-pod flow ns", bpf.p2p_ns)
        record("bpf minimal ns", bpf.minimal_ns)
        p(f"  from_container, service flow          {bpf.lxc_ns:8.0f} ns")
        p(f"  from_container, pod-to-pod flow       {bpf.p2p_ns:8.0f} ns   (no service)")
        p(f"  minimal tc (parse + 1 hash lookup)    {bpf.minimal_ns:8.0f} ns")
        p(f"  empty tc (timer + run overhead)       {bpf.empty_ns:8.0f} ns")
        p(f"  service flow / minimal                {bpf.raw_ratio:8.2f}x   ns/packet as reported")
        p(
            f"                                        {bpf.net_ratio:8.2f}x   the empty program's "
            f"time taken out of both"
        )
        p(
            f"                                        {bpf.loop_ratio:8.2f}x   as if both ran "
            f"repeat={bpf.repeat} loops (program time + a loop's per-run overhead)"
        )
        p(
            f"  repeat={bpf.repeat} in one call: minimal {bpf.minimal_loop_ns:.0f} ns, "
            f"empty {bpf.empty_loop_ns:.0f} ns per run"
        )
        verdicts = ", ".join(f"{k}: {v}" for k, v in bpf.naive_paths.items())
        p(
            f"  not usable: repeat={bpf.repeat} on from_container says "
            f"{bpf.naive_lxc_loop_ns:.0f} ns, but the kernel reruns the program on the frame the"
        )
        p(f"  previous run rewrote; verdicts of those runs: {verdicts}")

    # ---- targets
    results: list[tuple[bool | None, str]] = []
    top = main_levels[-1].label
    spread = ""
    for test, what in (("conn", "new-connection rate"), ("rr", "TCP_RR")):
        r = samples.ratios((test, top, "porin"), (test, base, "porin"))
        note = "" if top == str(PROGRAM_TARGET_N) else f" (target is for N={PROGRAM_TARGET_N})"
        if control:
            aa = samples.ratios((test, control.label, "porin"), (test, base, "porin"))
            spread = f"; A/A spread {aa.ratio()}"
        results.append(
            (
                bool(r.values) and r.median >= SCALE_TARGET,
                f"Porin {what} at N={top} within 5% of N={base}: {r.ratio()}{note}{spread}",
            )
        )
    for v in ipts:
        worst = min(
            (samples.ratios(("conn", lv.label, "porin"), ("conn", lv.label, v)).median, lv.label)
            for lv in main_levels
        )
        results.append(
            (
                worst[0] >= NEWCONN_VS_IPT_TARGET,
                f"Porin new-connection rate >= {NEWCONN_VS_IPT_TARGET}x {v} at every N: "
                f"lowest {worst[0]:.2f}x (N={worst[1]})",
            )
        )
    big = [lv for lv in main_levels if lv.n == PROGRAM_TARGET_N]
    if big:
        t = big[0].program_s["porin"]
        results.append(
            (
                t < PROGRAM_TARGET_S,
                f"programming {PROGRAM_TARGET_N} services (batch API): {t:.2f} s "
                f"(target < {PROGRAM_TARGET_S:g} s)",
            )
        )
        upd = statistics.median(big[0].update_ms)
        results.append(
            (
                upd < UPDATE_TARGET_MS,
                f"one service update among {PROGRAM_TARGET_N}: {upd:.2f} ms median of "
                f"{len(big[0].update_ms)} (API round trip; target < {UPDATE_TARGET_MS:g} ms)",
            )
        )
    else:
        results.append((None, f"programming {PROGRAM_TARGET_N} services: N not run"))
    if bpf is not None:
        results.append(
            (
                bpf.raw_ratio < BPF_RATIO_TARGET,
                f"established-flow program cost < {BPF_RATIO_TARGET:g}x minimal "
                f"(BPF_PROG_TEST_RUN ns/packet): {bpf.raw_ratio:.2f}x; without the harness's "
                f"per-call cost {bpf.net_ratio:.2f}x, as repeat loops {bpf.loop_ratio:.2f}x",
            )
        )
    p()
    p("targets")
    for ok, text in results:
        mark = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        p(f"  [{mark}] {text}")

    p()
    runs = [x for rnd in samples.rounds for x in rnd.results.values()]
    bad = [
        i + 1
        for i, rnd in enumerate(samples.rounds)
        if not all(map(undisturbed, rnd.results.values()))
    ]
    steal = max(x.steal for x in samples.rounds)
    busy = median([x.other_busy for x in samples.rounds])
    p(
        f"noise: {sum(not undisturbed(x) for x in runs)} of {len(runs)} runs had other processes "
        f"runnable on CPU{CPU} in over {100 * FOREIGN_MAX:.0f}% of samples"
        + (f" (rounds {bad})" if bad else "")
        + f"; CPU{CPU} steal up to {steal:.1f}%; {'/'.join(OTHER_CPUS)} busy {busy:.0f}% "
        f"(agents, this script, others); loadavg {loadavg()}"
    )
    if any("*" in line for line in printed):
        p(
            f"       * fewer than {samples.min_clean} undisturbed runs (or same-round pairs): "
            f"every run used, treat as noisy"
        )
    if steal > 2:
        p("       the hypervisor took CPU time: treat small differences as noise")
    for key, (n_err, stalls) in sorted(samples.failures().items()):
        if n_err or stalls:
            problems.append(
                f"{key[0]} N={key[1]} {key[2]}: {n_err} failed connections, "
                f"{stalls} stalls over 200 ms"
            )
    if problems:
        p("problems:")
        for pr in problems:
            p(f"  - {pr}")
    p(f"total time {elapsed:.0f} s")
    return all(ok is not False for ok, _ in results) and not problems


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so `finally` cleans up either way."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def available_variants() -> list[str]:
    out = ["porin"]
    for v, binary in IPT_BINARY.items():
        if shutil.which(f"{binary}-restore"):
            out.append(v)
        else:
            print(f"note: {binary}-restore not found, {v} skipped", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1 and 1000, short rounds")
    ap.add_argument("--rounds", type=int, help="measurement rounds (default 5, quick 3)")
    ap.add_argument("--seconds", type=float, help="seconds per test (default 2, quick 1)")
    ap.add_argument(
        "--extra-rounds",
        type=int,
        help="rounds that may replace disturbed ones (default 2, quick 0)",
    )
    ap.add_argument("--cpu", type=int, default=int(CPU), help=f"CPU for the traffic ({CPU})")
    ap.add_argument("--no-bpf", action="store_true", help="skip BPF_PROG_TEST_RUN")
    ap.add_argument("--sizes", help="comma-separated N values (default 1,1000,10000; quick 1,1000)")
    ap.add_argument("--paths", help="comma-separated subset of porin,ipt-legacy,ipt-nft")
    ap.add_argument(
        "--no-control", action="store_true", help="no A/A control node (second N=1 node)"
    )
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 2.0)
    if args.extra_rounds is None:
        args.extra_rounds = 0 if args.quick else 2
    sizes = [1, 1000] if args.quick else [1, 1000, 10000]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    if len(set(sizes)) != len(sizes):
        ap.error("--sizes must be distinct")

    if os.geteuid() != 0:
        print(
            "bench_lb.py needs root (namespaces, bpffs, iptables in lab namespaces)",
            file=sys.stderr,
        )
        return 1
    if len(os.sched_getaffinity(0)) < 2 or args.cpu not in os.sched_getaffinity(0):
        print(f"need CPU {args.cpu} and at least one other CPU", file=sys.stderr)
        return 1
    set_cpu(args.cpu)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    variants = available_variants()
    if args.paths:
        variants = [v for v in variants if v == "porin" or v in args.paths.split(",")]
    problems: list[str] = []
    lab = Lab()
    levels: list[Level] = []
    bpf: BpfResult | None = None
    try:
        with signals_as_interrupt():
            if not args.no_bpf:
                bpf = bpf_microbench(4000 if args.quick else 10000, 100000, log)
            specs = [(n, str(n), variants) for n in sizes]
            if not args.no_control:
                specs.append((sizes[0], f"{sizes[0]} (A/A)", ["porin"]))
            for n, label, vs in specs:
                node = Node()
                lab.on_close(node.close)
                levels.append(Level(n=n, node=node, label=label, variants=vs))
            log(f"starting {len(levels)} agents (one node per N, plus the A/A control)")
            start_agents([lv.node for lv in levels])
            for lv in levels:
                build_level(lab, lv, problems)
                log(
                    f"N={lv.label}: programmed "
                    + ", ".join(f"{v} {s:.3f} s" for v, s in lv.program_s.items())
                )
            log(f"measuring: {args.rounds} rounds, paths {variants}")
            samples = measure(lab, levels, args.rounds, args.extra_rounds, args.seconds, log)
            for lv in levels:
                check_node(lv, problems)
            ok = report(levels, samples, bpf, problems, args, time.monotonic() - started)
            return 0 if ok else 1
    except KeyboardInterrupt:
        print("interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
