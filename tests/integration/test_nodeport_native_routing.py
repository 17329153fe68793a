"""`tunnel: disabled`: the network routes the pods (here, each node has a
route to the other's pod CIDR through its address, as host-gw or BGP would
set it up). A NodePort reached on one node whose only backend is on the
other, from an external host: tc translates destination and source and
hands the packet to the kernel to route, unencapsulated; the reply comes
back to the frontend node and is translated back. Pods reach each other
across nodes the same way."""

from __future__ import annotations

import subprocess

import pytest
from peers import WHOAMI, start, tcp, udp
from porinlab import Etcd, Netns, Node, Underlay, start_agents, wait_for

ETCD_IP = "198.18.0.2"
EXT_IP = "198.18.0.200"
NODE1, NODE2 = "198.18.0.31", "198.18.0.32"
NODE_PORT = 30310


def count(node: Node, reason: str) -> int:
    rows = node.porin_json("metrics", "list")
    return sum(r["packets"] for r in rows if r["reasonName"] == reason)


@pytest.fixture(scope="module")
def site():
    underlay = Underlay()
    etcd = Etcd(underlay, ETCD_IP)
    ext = Netns(kind="ext")
    nodes: list[Node] = []
    procs: list[subprocess.Popen] = []
    try:
        etcd.start()
        underlay.attach(ext, EXT_IP, xdp_pass=False)
        for i, ip in ((1, NODE1), (2, NODE2)):
            nodes.append(
                Node(
                    pod_cidr=f"10.247.{i}.0/24",
                    underlay=underlay,
                    node_ip=ip,
                    kvstore={"endpoints": [etcd.endpoint]},
                    tunnel="disabled",
                    clusterCIDR="10.247.0.0/16",
                    xdpMode="native",
                )
            )
        for n, other, cidr in (
            (nodes[0], NODE2, "10.247.2.0/24"),
            (nodes[1], NODE1, "10.247.1.0/24"),
        ):
            n.ns.exec(["ip", "route", "add", cidr, "via", other])
        start_agents(nodes)
        backend = nodes[1].add_pod()
        procs.append(start(backend, WHOAMI, "8080"))
        for proto, port, sid in (("tcp", 80, "40"), ("udp", 53, "41")):
            nodes[0].porin(
                "service", "update", "--id", sid, "--frontend", f"10.96.4.{sid}:{port}",
                "--backends", f"{backend.ip}:8080", "--type", "nodeport",
                "--node-port", str(NODE_PORT), "--protocol", proto,
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
        yield nodes, ext, backend
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in nodes:
            n.close()
        ext.close()
        etcd.close()
        underlay.close()


def test_tcp_nodeport_to_a_backend_on_another_node(site):
    nodes, ext, _ = site
    before = count(nodes[0], "NODEPORT_SNAT")
    seen, peer, port = tcp(ext, NODE1, NODE_PORT).stdout.split()
    assert (seen, peer, port) == (NODE1, NODE1, str(NODE_PORT))  # SNAT, from the frontend
    assert count(nodes[0], "NODEPORT_SNAT") > before


def test_udp_nodeport_to_a_backend_on_another_node(site):
    nodes, ext, _ = site
    seen, peer, port = udp(ext, NODE1, NODE_PORT).stdout.split()
    assert (seen, peer, port) == (NODE1, NODE1, str(NODE_PORT))


def test_a_pod_reaches_a_pod_on_the_other_node(site):
    nodes, _, backend = site
    client = nodes[0].add_pod()
    try:
        seen, peer, _ = tcp(client, backend.ip, 8080).stdout.split()
        assert (seen, peer) == (client.ip, backend.ip)  # no translation between pods
    finally:
        nodes[0].del_pod(client)
