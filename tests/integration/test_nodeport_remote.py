"""A NodePort reached on one node whose only backend is on another, from an
external host, with native XDP on the node devices: nodePortMode dsr (XDP
sends the client's packet to the backend's node, the backend answers the
client directly as the frontend) and snat (tc translates a new flow's source,
XDP the rest of the flow's packets, the reply comes back through the
frontend node), over both overlays."""

from __future__ import annotations

import pytest
from nodeport_site import EXT_IP, count, nodeport_site
from peers import TCP_HOLD, WHOAMI, start, tcp, udp
from porinlab import Node

NODE1, NODE2 = "198.18.0.21", "198.18.0.22"
NODE_PORT = 30300


@pytest.fixture(
    scope="module",
    params=[("dsr", "vxlan"), ("snat", "ipip"), ("snat", "vxlan")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def site(request):
    mode, tunnel = request.param
    with nodeport_site(
        (NODE1, NODE2), "10.246", NODE_PORT, (30, 31),
        tunnel=tunnel, xdpMode="native", nodePortMode=mode,
    ) as s:  # fmt: skip
        yield mode, s.nodes, s.ext, s.backend


def test_xdp_is_native_on_the_node_devices(site):
    _, nodes, _, _ = site
    for n in nodes:
        (x,) = n.porin_json("status")["host"]["xdp"]
        assert x["mode"] == "native"


def xdp_sent(node: Node) -> int:
    got = node.porin_json("metrics", "xdp")
    return got["tx"] + got["redirect"]


def test_tcp_to_a_backend_on_another_node(site):
    mode, nodes, ext, _ = site
    reason = "NODEPORT_DSR" if mode == "dsr" else "NODEPORT_SNAT"
    before, sent = count(nodes[0], reason), xdp_sent(nodes[0])
    seen, peer, port = tcp(ext, NODE1, NODE_PORT).stdout.split()
    # the reply came from the frontend the client used
    assert (peer, port) == (NODE1, str(NODE_PORT))
    # DSR keeps the client's address; SNAT shows the frontend node's
    assert seen == (EXT_IP if mode == "dsr" else NODE1)
    assert count(nodes[0], reason) > before
    # dsr: every packet of the client's, snat: all but the SYN, sent from XDP
    assert xdp_sent(nodes[0]) >= sent + (3 if mode == "dsr" else 2)
    if mode == "dsr":
        assert count(nodes[1], "DSR_REPLY") > 0


def test_udp_to_a_backend_on_another_node(site):
    mode, nodes, ext, _ = site
    seen, peer, port = udp(ext, NODE1, NODE_PORT).stdout.split()
    assert (peer, port) == (NODE1, str(NODE_PORT))
    assert seen == (EXT_IP if mode == "dsr" else NODE1)


def test_the_backends_own_node_serves_it_too(site):
    _, nodes, ext, _ = site
    seen, peer, _ = tcp(ext, NODE2, NODE_PORT).stdout.split()
    assert (seen, peer) == (EXT_IP, NODE2)  # a local backend: no translation of the client


def test_established_flow_survives_an_agent_restart(site):
    _, nodes, ext, _ = site
    hold = start(ext, TCP_HOLD, NODE1, str(NODE_PORT))
    try:
        hold.stdin.write("1\n")
        hold.stdin.flush()
        first = hold.stdout.readline().strip()
        assert first in (EXT_IP, NODE1)
        nodes[0].stop_agent()
        nodes[0].start_agent()
        hold.stdin.write("2\n")
        hold.stdin.flush()
        assert hold.stdout.readline().strip() == first
    finally:
        hold.kill()
        hold.wait()


def test_a_fragmented_datagram_arrives_whole(site):
    mode, nodes, ext, _ = site
    # to the backend's own node: tc follows the fragments to the pod
    seen, peer, _ = udp(ext, NODE2, NODE_PORT, size=3000).stdout.split()
    assert (seen, peer) == (EXT_IP, NODE2)
    # to the other node, with room on the way for the encapsulation (the
    # client's route to it is 1400 bytes: its fragments get 28 or 50 more)
    ext.exec(["ip", "route", "replace", f"{NODE1}/32", "dev", "eth0", "mtu", "1400"])
    try:
        before = count(nodes[0], "FRAG_UNKNOWN")
        seen, peer, port = udp(ext, NODE1, NODE_PORT, size=3000).stdout.split()
        assert (peer, port) == (NODE1, str(NODE_PORT))
        assert seen == (EXT_IP if mode == "dsr" else NODE1)
        assert count(nodes[0], "FRAG_UNKNOWN") == before
        assert any(d["dport"] == NODE_PORT for d in nodes[0].porin_json("bpf", "frag", "list"))
    finally:
        ext.exec(["ip", "route", "del", f"{NODE1}/32"])


# ---------- porin trace on the same site: its answer against the real packet ----------


def stage_reasons(res: dict) -> list[str]:
    return [d["reason"] for st in res["stages"] for d in st["decisions"] if d["kind"] == "verdict"]


def test_trace_of_an_outside_packet_to_the_node_port(site):
    mode, nodes, ext, backend = site
    res = nodes[0].porin_json("trace", "--from", EXT_IP, "--to", f"{NODE1}:{NODE_PORT}/tcp")
    programs = [st["program"] for st in res["stages"]]
    reason = "NODEPORT_DSR" if mode == "dsr" else "NODEPORT_SNAT"
    if mode == "dsr":  # balanced and encapsulated in XDP
        assert programs == ["from_xdp"]
        assert res["stages"][0]["verdict"]["return"] in ("XDP_TX", "XDP_REDIRECT")
        assert f"-> {NODE2} " in res["stages"][0]["packetOut"]["summary"]
    else:  # XDP passes it, tc translates it
        assert programs == ["from_xdp", "from_netdev"]
        assert res["stages"][0]["verdict"]["return"] == "XDP_PASS"
    assert res["verdict"]["reason"] == reason
    svc = [d for st in res["stages"] for d in st["decisions"] if d["kind"] == "service"]
    assert svc and svc[0]["backend"] == f"{backend.ip}:8080"
    # the real packet takes the path the trace gave
    before = count(nodes[0], reason)
    tcp(ext, NODE1, NODE_PORT)
    assert count(nodes[0], reason) > before


def test_trace_to_a_remote_pod_names_its_node(site):
    _, nodes, _, backend = site
    client = nodes[0].add_pod()
    try:
        res = nodes[0].porin_json("trace", "--from", client.ip, "--to", f"{backend.ip}:8080/tcp")
        assert res["verdict"]["reason"] == "TUNNELED"
        (st,) = res["stages"]
        tunnel = [d for d in st["decisions"] if d["kind"] == "tunnel"]
        if tunnel:  # VXLAN: the tunnel key the program set
            assert tunnel[0]["remote"] == NODE2 and tunnel[0]["node"] == nodes[1].ns.name
        else:  # IPIP: the outer header the program wrote
            assert f"-> {NODE2} " in st["packetOut"]["summary"]
            assert f"carrying {client.ip}:" in st["packetOut"]["summary"]
        before = count(nodes[0], "TUNNELED")
        seen, _, _ = tcp(client, backend.ip, 8080).stdout.split()
        assert seen == client.ip
        assert count(nodes[0], "TUNNELED") > before
    finally:
        nodes[0].del_pod(client)


def test_trace_to_an_outside_host_shows_the_masquerade(site):
    _, nodes, ext, _ = site
    server = start(ext, WHOAMI, "8181")
    client = nodes[0].add_pod()
    try:
        res = nodes[0].porin_json("trace", "--from", client.ip, "--to", f"{EXT_IP}:8181/tcp")
        assert res["verdict"]["reason"] == "MASQUERADED"
        nat = [d for st in res["stages"] for d in st["decisions"] if d["kind"] == "nat"]
        (rw,) = [r for r in nat[0]["rewrites"] if r["field"] == "source"]
        assert rw["to"].startswith(f"{NODE1}:")
        assert any(
            t["direction"] == "OUT" and t["xlate_addr"] == NODE1 for t in res["changes"]["nat"]
        ), res["changes"]
        # for real: the outside host sees the node's address
        seen, _, _ = tcp(client, EXT_IP, 8181).stdout.split()
        assert seen == NODE1
    finally:
        nodes[0].del_pod(client)
        server.kill()
        server.wait()
