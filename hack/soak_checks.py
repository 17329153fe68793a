"""hack/soak's checks: nothing left without its pod, every live pod reachable.

Run every 100 cycles and at the end. On one node: no veth, address lease,
endpoint record, endpoints map entry, local ipcache entry or pending-delete
file without its pod, and every live pod answers its node's ping. On
several nodes, also the kvstore's ipcache keys and every node's ipcache map
(hack/soak_cluster.py), and every live pod answers a pod on another node.
The agents' memory and descriptors are sampled (summed over the nodes).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soak_cluster
from porinlab import Node, wait_for

if TYPE_CHECKING:
    from soak import Soak


@dataclass
class SoakResult:
    seed: int
    cycles: int = 0
    faults: Counter = field(default_factory=Counter)
    checks: int = 0
    leaks: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    rss_kb: list[tuple[int, int]] = field(default_factory=list)  # (cycle, RSS)
    fds: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outages: list[soak_cluster.OutageResult] = field(default_factory=list)

    @staticmethod
    def slope(points: list[tuple[int, int]]) -> float | None:
        """Least-squares slope per 100 cycles; None below two distinct cycles."""
        if len({x for x, _ in points}) < 2:
            return None
        n = len(points)
        mx = sum(x for x, _ in points) / n
        my = sum(y for _, y in points) / n
        var = sum((x - mx) ** 2 for x, _ in points)
        return 100 * sum((x - mx) * (y - my) for x, y in points) / var

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "cycles": self.cycles,
            "faults": dict(self.faults),
            "checks": self.checks,
            "leaks": self.leaks,
            "unreachable": self.unreachable,
            "errors": self.errors,
            # after the first sample (cycle 0: nothing has run yet); None when
            # the run is too short for a slope (samples at one cycle only)
            "rssKiBPer100Cycles": _round(self.slope(self.rss_kb[1:]), 1),
            "fdsPer100Cycles": _round(self.slope(self.fds[1:]), 2),
            "rssKiB": [r for _, r in self.rss_kb],
            "fds": [f for _, f in self.fds],
            "outages": [o.to_json() for o in self.outages],
        }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def check(soak: Soak, cycle: int) -> None:
    soak.res.checks += 1
    rss = fds = 0
    for node in soak.nodes:
        check_node(soak, cycle, node)
        pid = soak._agent_pid(node)
        rss += next(
            int(line.split()[1])
            for line in open(f"/proc/{pid}/status")
            if line.startswith("VmRSS:")
        )
        fds += len(os.listdir(f"/proc/{pid}/fd"))
    if soak.lab is not None:
        check_cluster(soak, cycle)
    # summed over the nodes' agents
    soak.res.rss_kb.append((cycle, rss))
    soak.res.fds.append((cycle, fds))
    soak.log(
        f"cycle {cycle}: {len(soak.live)} pods, leaks {len(soak.res.leaks)}, "
        f"RSS {rss} KiB, fds {fds}"
    )


def check_node(soak: Soak, cycle: int, node: Node) -> None:
    at = f"cycle {cycle}{'' if soak.lab is None else ' ' + node.ns.name}"
    eps = node.porin_json("endpoint", "list")
    mine = [p for p in soak.all_pods() if p.node is node]
    live_ids = {p.container_id for p in mine}
    got_ids = {e["containerID"] for e in eps}
    for cid in got_ids - live_ids:
        soak.res.leaks.append(f"{at}: endpoint of {cid} without its pod")
    host_ifs = {e["hostIfname"] for e in eps if "hostIfname" in e}
    for link in node.links():
        if link.startswith("lxc") and link not in host_ifs:
            soak.res.leaks.append(f"{at}: veth {link} without its pod")
    ips = {e["ipv4"].split("/")[0] for e in eps}
    ipam = Path(node.cfg.state_dir) / "ipam.json"
    leased = set(json.loads(ipam.read_text()).get("allocations", {})) if ipam.exists() else set()
    for ip in leased - ips:
        soak.res.leaks.append(f"{at}: address lease {ip} without its pod")
    records = Path(node.cfg.state_dir) / "endpoints"
    n_records = len(list(records.glob("*.json"))) if records.is_dir() else 0
    if n_records != len(eps):
        soak.res.leaks.append(f"{at}: {n_records} endpoint records, {len(eps)} pods")
    for e in node.porin_json("bpf", "endpoint", "list"):
        if e["ip"] not in ips:
            soak.res.leaks.append(f"{at}: endpoints map entry {e['ip']}")
    if soak.lab is None:  # on several nodes: the whole cluster's ipcache, below
        for e in node.porin_json("bpf", "ipcache", "list"):
            ip = e["prefix"].split("/")[0]
            if ip.startswith("10.248.") and e["prefix"].endswith("/32") and ip not in ips:
                if ip != node.porin_json("status")["gateway"]:
                    soak.res.leaks.append(f"{at}: ipcache entry {e['prefix']}")
    pending = Path(node.cfg.socket).parent / "pending-delete"
    if pending.is_dir() and any(pending.iterdir()):
        soak.res.leaks.append(f"{at}: pending-delete files {os.listdir(pending)}")
    for p in mine:
        if not (p.result and node.ns.exec(
            ["ping", "-c", "1", "-W", "2", p.ip], check=False
        ).returncode == 0):  # fmt: skip
            soak.res.unreachable.append(f"{at}: live pod {p.container_id}")


def check_cluster(soak: Soak, cycle: int) -> None:
    """The kvstore and every node's ipcache agree with the live pods (the
    other nodes learn through watches: given CONVERGE_S), and every live
    pod answers a pod on another node."""
    assert soak.lab is not None
    lab = soak.lab
    try:
        wait_for(
            lambda: not soak_cluster.ipcache_diff(soak, lab.kvstore_ipcache()),
            soak_cluster.CONVERGE_S,
            "the kvstore and the ipcache maps to agree with the pods",
        )
    except TimeoutError:
        for d in soak_cluster.ipcache_diff(soak, lab.kvstore_ipcache()):
            soak.res.leaks.append(f"cycle {cycle}: {d}")
    for p in soak.live:
        peer = next((a for a in soak.anchors if a.node is not p.node), None)
        if peer is not None and not peer.ping(p.ip):
            soak.res.unreachable.append(
                f"cycle {cycle}: live pod {p.container_id} on {p.node.ns.name} "
                f"from {peer.node.ns.name}"
            )
    conv = lab.conversation
    if conv is not None and not conv.alive():
        soak.res.errors.append(f"cycle {cycle}: the conversation broke: {conv.error()}")
        lab.conversation = None  # said once
