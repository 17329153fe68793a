"""Node-to-node health: can this node reach every other one, and how.

Each round probes every other node of the cluster three ways:

    icmp     an ICMP echo to the node IP (the node network)
    http     GET http://<node IP>:<healthPort>/healthz (the node network, and
             the other agent alive: daemon/peer_api.py answers it)
    overlay  GET http://<its pod gateway>:<healthPort>/healthz: through this
             node's porin_host route, host_to_overlay, the tunnel and the other
             node's from_overlay, so a broken overlay shows even while the
             node network works

A round starts every max(3 s, 50 ms per node): 1,000 nodes are probed once
every 50 s, so no node gets more than 20 probes a second from the rest of
the cluster (Cilium scales its probe interval with cluster size the same
way); a node's probes are spread over the round, at most `WORKERS` at a
time, each with a 1 s timeout. A broken path on a small cluster shows
within one round and a timeout: about 4 s.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from porin.daemon.controllers import Controller

log = logging.getLogger("porin.health")

PATHS = ("icmp", "http", "overlay")
BASE_INTERVAL = 3.0
PER_NODE = 0.05
TIMEOUT = 1.0
WORKERS = 8


def round_interval(nodes: int) -> float:
    return max(BASE_INTERVAL, nodes * PER_NODE)


@dataclass
class PathHealth:
    ok: bool | None = None  # None: not probed yet
    latency_ms: float | None = None
    last_probe: float = 0.0
    last_success: float = 0.0
    last_error: str = ""

    def record(self, ok: bool, latency: float, error: str = "") -> None:
        now = time.time()
        self.ok, self.last_probe = ok, now
        if ok:
            self.latency_ms, self.last_success, self.last_error = round(latency * 1000, 3), now, ""
        else:
            self.latency_ms, self.last_error = None, error

    def to_json(self) -> dict[str, Any]:
        return {
            "reachable": self.ok,
            "latencyMs": self.latency_ms,
            "lastProbe": self.last_probe or None,
            "lastSuccess": self.last_success or None,
            "lastError": self.last_error,
        }


@dataclass
class NodeHealth:
    name: str
    ip: str
    overlay_ip: str
    paths: dict[str, PathHealth] = field(default_factory=lambda: {p: PathHealth() for p in PATHS})

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ip": self.ip,
            "overlayIP": self.overlay_ip,
            "nodeNetwork": {p: self.paths[p].to_json() for p in ("icmp", "http")},
            "overlay": {"http": self.paths["overlay"].to_json()},
            "healthy": all(self.paths[p].ok for p in PATHS if self.overlay_ip or p != "overlay"),
        }


def icmp_echo(ip: str, timeout: float = TIMEOUT) -> float:
    """Seconds an echo to `ip` took; raises OSError (TimeoutError) without a reply."""
    ident, seq = random.getrandbits(16), random.getrandbits(16)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"porin-health" + os.urandom(4)
    csum = _checksum(header + payload)
    packet = struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        started = time.monotonic()
        s.sendto(packet, (ip, 0))
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                raise TimeoutError(f"no echo reply from {ip} within {timeout:g}s")
            data, (src, _port) = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            if src != ip or len(data) < ihl + 8:
                continue
            typ, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if typ == 0 and (rid, rseq) == (ident, seq):
                return time.monotonic() - started


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def http_health(ip: str, port: int, node: str, timeout: float = TIMEOUT) -> float:
    """Seconds GET /healthz took; raises OSError or ValueError when the answer is wrong."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    if r.status != 200:
        raise ValueError(f"GET /healthz answered {r.status}")
    who = json.loads(body).get("node")
    if who != node:
        raise ValueError(f"answered by node {who!r}, not {node!r}")
    return time.monotonic() - started


class HealthProber:
    def __init__(self, nodes: Callable[[], list[Any]], port: int) -> None:
        self.nodes = nodes  # the remote NodeInfos (daemon/cluster.py)
        self.port = port
        self.health: dict[str, NodeHealth] = {}
        self.controller = Controller("node-health")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="health-probe")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="node-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            nodes = list(self.nodes())
            try:
                with self.controller.run():
                    self.probe_round(nodes)
            except Exception:
                log.exception("node health round failed")
            left = round_interval(len(nodes)) - (time.monotonic() - started)
            self._stop.wait(max(0.1, left))

    def probe_round(self, nodes: list[Any]) -> None:
        """Probe every node once, spread over the round, a few at a time."""
        with self._lock:
            for name in set(self.health) - {n.name for n in nodes}:
                del self.health[name]  # it left the cluster
            for n in nodes:
                h = self.health.get(n.name)
                if h is None or (h.ip, h.overlay_ip) != (n.ip, n.gateway):
                    self.health[n.name] = NodeHealth(n.name, n.ip, n.gateway)
        gap = round_interval(len(nodes)) / max(1, len(nodes)) if len(nodes) > WORKERS else 0
        futures = []
        for n in nodes:
            futures.append(self._pool.submit(self._probe_node, n))
            if gap and self._stop.wait(gap):
                return
        for f in futures:
            f.result()

    def _probe_node(self, n: Any) -> None:
        h = self.health.get(n.name)
        if h is None:
            return
        probes: list[tuple[str, Callable[[], float]]] = [
            ("icmp", lambda: icmp_echo(n.ip)),
            ("http", lambda: http_health(n.ip, self.port, n.name)),
        ]
        if n.gateway:
            probes.append(("overlay", lambda: http_health(n.gateway, self.port, n.name)))
        for path, probe in probes:
            was = h.paths[path].ok
            try:
                h.paths[path].record(True, probe())
            except (OSError, ValueError, http.client.HTTPException) as e:
                h.paths[path].record(False, 0.0, f"{type(e).__name__}: {e}")
            now = h.paths[path].ok
            if was is not None and was != now:
                log.warning(
                    "node %s over %s: %s%s",
                    n.name,
                    path,
                    "reachable again" if now else "unreachable",
                    "" if now else f" ({h.paths[path].last_error})",
                )

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.health[k].to_json() for k in sorted(self.health)]
