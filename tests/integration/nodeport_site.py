"""Two nodes sharing an etcd on one node network, an external host, and a
NodePort (TCP and UDP) on node 1 whose only backend is a pod on node 2 that
answers with the address it saw: what the NodePort integration tests stand
on, each with its own addresses and node configuration."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from peers import WHOAMI, start
from porinlab import Etcd, Netns, Node, Underlay, start_agents, wait_for

ETCD_IP = "198.18.0.2"
EXT_IP = "198.18.0.200"


@dataclass
class Site:
    nodes: list[Node]
    ext: Netns
    backend: Any  # the pod on node 2 (porinlab's Pod)


@contextmanager
def nodeport_site(
    node_ips: tuple[str, str],
    pod_net: str,
    node_port: int,
    service_ids: tuple[int, int],
    routed_pods: bool = False,
    ext_xdp_pass: bool = True,
    **node_config: Any,
) -> Iterator[Site]:
    """Nodes at `node_ips` with pod CIDRs `pod_net`.1.0/24 and .2.0/24 (the
    cluster `pod_net`.0.0/16) and `node_config`; services `service_ids`
    (TCP, UDP) on `node_port`. `routed_pods`: each node routes the other's
    pod CIDR through its address, as host-gw or BGP would (`tunnel:
    disabled`). Everything is removed on the way out, also on failure."""
    underlay = Underlay()
    etcd = Etcd(underlay, ETCD_IP)
    ext = Netns(kind="ext")
    nodes: list[Node] = []
    procs: list[subprocess.Popen] = []
    try:
        etcd.start()
        underlay.attach(ext, EXT_IP, xdp_pass=ext_xdp_pass)
        for i, ip in enumerate(node_ips, start=1):
            nodes.append(
                Node(
                    pod_cidr=f"{pod_net}.{i}.0/24",
                    underlay=underlay,
                    node_ip=ip,
                    kvstore={"endpoints": [etcd.endpoint]},
                    clusterCIDR=f"{pod_net}.0.0/16",
                    **node_config,
                )
            )
        if routed_pods:
            for i, n in enumerate(nodes):
                other = 1 - i
                n.ns.exec(["ip", "route", "add", f"{pod_net}.{other + 1}.0/24", "via",
                           node_ips[other]])  # fmt: skip
        start_agents(nodes)
        backend = nodes[1].add_pod()
        procs.append(start(backend, WHOAMI, "8080"))
        for sid, proto, port in ((service_ids[0], "tcp", 80), (service_ids[1], "udp", 53)):
            nodes[0].porin(
                "service", "update", "--id", str(sid), "--frontend", f"10.96.{sid}.1:{port}",
                "--backends", f"{backend.ip}:8080", "--type", "nodeport",
                "--node-port", str(node_port), "--protocol", proto,
            )  # fmt: skip
        want = f"{backend.ip}/32"
        for n in nodes:
            wait_for(
                lambda n=n: (
                    any(e["prefix"] == want for e in n.porin_json("bpf", "ipcache", "list"))
                    and len(n.porin_json("service", "list")) == 2
                ),
                20,
                f"{n.ns.name} to learn the backend and the services",
            )
        yield Site(nodes, ext, backend)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in nodes:
            n.close()
        ext.close()
        etcd.close()
        underlay.close()


def count(node: Node, reason: str) -> int:
    """Packets counted under `reason` on `node`, whatever the direction."""
    rows = node.porin_json("metrics", "list")
    return sum(r["packets"] for r in rows if r["reasonName"] == reason)
