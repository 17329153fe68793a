"""`tunnel: disabled`: the network routes the pods (here, each node has a
route to the other's pod CIDR through its address, as host-gw or BGP would
set it up). A NodePort reached on one node whose only backend is on the
other, from an external host: tc translates destination and source and
hands the packet to the kernel to route, unencapsulated; the reply comes
back to the frontend node and is translated back. Pods reach each other
across nodes the same way."""

from __future__ import annotations

import pytest
from nodeport_site import count, nodeport_site
from peers import tcp, udp

NODE1, NODE2 = "198.18.0.31", "198.18.0.32"
NODE_PORT = 30310


@pytest.fixture(scope="module")
def site():
    with nodeport_site(
        (NODE1, NODE2), "10.247", NODE_PORT, (40, 41), routed_pods=True,
        ext_xdp_pass=False, tunnel="disabled", xdpMode="native",
    ) as s:  # fmt: skip
        yield s.nodes, s.ext, s.backend


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
