"""NodePort to a backend on another node, on crafted packets: DSR from XDP
(outer header, option, inner DNAT and checksums checked with scapy; the
flow table; Maglev without it; fragmentation needed), DSR received on the
backend's node and its replies, and SNAT through the overlay in tc."""

from __future__ import annotations

import os

import pytest
from lxc_harness import (
    DIR_INGRESS,
    POD_A,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    checksums_valid,
    on_ifindex,
)
from nodeport_net import (
    CLIENT,
    NODE_IP,
    NODE_PORT,
    OTHER_POD,
    PEER_MAC,
    PEER_NODE,
    REMOTE_POD,
    THIRD_NODE,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    from_client,
    nodeport,
)
from porinlab import in_netns
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, defragment, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from porin.daemon.config import AgentConfig
from porin.daemon.datapath import compile_programs
from porin.maps import syscall
from porin.maps.conntrack_tables import Conntrack
from porin.maps.dsr4 import Dsr4Map
from porin.maps.lb4_flows import Lb4FlowsMap
from porin.maps.tunnel_config import TunnelConfig
from porin.models import Backend, Service


@pytest.fixture(scope="module")
def dsr_xdp(lxc_datapath):
    """bpf_xdp.c built with nodePortMode dsr, on the test's maps."""
    dp, _ = lxc_datapath
    root = os.path.dirname(dp.endpoints.path)
    module, progs = compile_programs(
        "bpf_xdp.c", AgentConfig(bpffs_root=root, node_port_mode="dsr"), ["from_xdp"]
    )
    yield progs["from_xdp"], root
    del module


def run_xdp(prog, frame: bytes) -> tuple[int, bytes]:
    ret, out, _ = syscall.prog_test_run(prog.fd, frame)
    return ret, out


def test_dsr_from_xdp_to_a_backend_on_another_node(cluster, dsr_xdp, node_net):
    lxc, services = cluster
    prog, _ = dsr_xdp
    nodeport(services, REMOTE_POD)
    syn = from_client(TCP(sport=40000, dport=NODE_PORT, flags="S", seq=1), size=20)
    with in_netns(node_net):
        ret, out = run_xdp(prog, syn)
    assert ret == XDP_REDIRECT  # out of node0, the FIB's device (the test ran on lo)
    got = Ether(out)
    assert got.dst == PEER_MAC
    outer = got[IP]
    assert (outer.src, outer.dst, outer.proto, outer.ihl, outer.ttl) == (
        NODE_IP,
        PEER_NODE,
        4,
        7,
        64,
    )
    assert outer.flags.DF and outer.len == 28 + len(syn) - 14
    raw = bytes(outer)[:28]
    assert raw[20:28] == bytes([0x9A, 8]) + NODE_PORT.to_bytes(2, "big") + bytes(
        map(int, NODE_IP.split("."))
    )
    fresh = IP(raw)
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == outer.chksum  # the outer checksum, independently
    inner = IP(bytes(outer)[28:])
    assert (inner.src, inner.dst, inner[TCP].sport, inner[TCP].dport) == (
        CLIENT,
        REMOTE_POD,
        40000,
        8080,
    )
    assert checksums_valid(Ether() / inner)
    assert lxc.count("NODEPORT_DSR", DIR_INGRESS) >= 1


def test_the_flow_table_keeps_a_flow_on_its_backend(cluster, dsr_xdp, node_net):
    lxc, services = cluster
    prog, root = dsr_xdp
    Lb4FlowsMap(root).clear()
    nodeport(services, REMOTE_POD, OTHER_POD)  # random: only the table keeps it
    with in_netns(node_net):
        seen = {
            Ether(run_xdp(prog, from_client(TCP(sport=41000, dport=NODE_PORT, flags="A")))[1])[
                IP
            ].dst
            for _ in range(20)
        }
        assert len(seen) == 1
        # and flows spread over both nodes
        nodes = {
            Ether(run_xdp(prog, from_client(TCP(sport=p, dport=NODE_PORT, flags="S")))[1])[IP].dst
            for p in range(42000, 42040)
        }
    assert nodes == {PEER_NODE, THIRD_NODE}


def test_maglev_balances_an_unseen_flow_alike_without_the_table(cluster, dsr_xdp, node_net):
    """A TCP packet (no SYN) of a flow this node never saw, e.g. after the
    client's traffic moved to it: Maglev picks what any node would."""
    lxc, services = cluster
    prog, root = dsr_xdp
    nodeport(services, REMOTE_POD, OTHER_POD, algorithm="maglev")
    flows = Lb4FlowsMap(root)
    with in_netns(node_net):
        for sport in range(43000, 43010):
            ack = from_client(TCP(sport=sport, dport=NODE_PORT, flags="A"))
            flows.clear()
            first = Ether(run_xdp(prog, ack)[1])[IP].dst
            flows.clear()
            assert Ether(run_xdp(prog, ack)[1])[IP].dst == first


def test_too_big_for_the_encapsulation(cluster, dsr_xdp, node_net):
    lxc, services = cluster
    prog, _ = dsr_xdp
    nodeport(services, REMOTE_POD)
    big = from_client(TCP(sport=5000, dport=NODE_PORT, flags="A"), size=1500 - 40)  # 1500 bytes
    with in_netns(node_net):
        ret, out = run_xdp(prog, big)
    assert ret == XDP_TX
    got = Ether(out)
    assert (got[IP].src, got[IP].dst) == (NODE_IP, CLIENT)
    assert (got[ICMP].type, got[ICMP].code, got[ICMP].nexthopmtu) == (3, 4, 1500 - 28)
    quoted = got[IPerror]
    assert (quoted.src, quoted.dst, quoted.len) == (CLIENT, NODE_IP, 1500)
    assert checksums_valid(got)
    assert lxc.count("FRAG_NEEDED", DIR_INGRESS) >= 1
    # may be fragmented: the stack's
    big = from_client(TCP(sport=5001, dport=NODE_PORT, flags="A"), size=1500 - 40, df=False)
    with in_netns(node_net):
        ret, out = run_xdp(prog, big)
    assert (ret, out) == (XDP_PASS, big)


def test_what_xdp_leaves_to_tc(cluster, dsr_xdp, node_net):
    lxc, services = cluster
    prog, _ = dsr_xdp
    lxc.endpoints.upsert(POD_A)
    nodeport(services, POD_A.ip)  # a local backend: tc's
    syn = from_client(TCP(sport=44000, dport=NODE_PORT, flags="S"))
    with in_netns(node_net):
        assert run_xdp(prog, syn) == (XDP_PASS, syn)
        # no frontend on that port, ARP, a truncated header
        other = from_client(TCP(sport=44000, dport=NODE_PORT + 1, flags="S"))
        assert run_xdp(prog, other) == (XDP_PASS, other)
        arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", type=0x0806)) + b"\0" * 28
        assert run_xdp(prog, arp)[0] == XDP_PASS
        assert run_xdp(prog, syn[:30])[0] == XDP_DROP


# ---------- the backend's node ----------


def dsr_packet(outer_src: str, inner: IP, fe_port: int = NODE_PORT, fe: str = PEER_NODE) -> bytes:
    opt = bytes([0x9A, 8]) + fe_port.to_bytes(2, "big") + bytes(map(int, fe.split(".")))
    outer = IP(src=outer_src, dst=NODE_IP, proto=4, options=[opt], flags="DF")
    return bytes(Ether(src=PEER_MAC, dst="02:00:00:00:00:01") / outer / inner)


def test_dsr_is_received_delivered_and_answered_as_the_frontend(cluster, tmp_path):
    lxc, _ = cluster
    lxc.tunnel.set(TunnelConfig.of("ipip", 0, 1, NODE_IP, 1500))
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    inner = IP(src=CLIENT, dst=POD_A.ip, ttl=63) / TCP(sport=45000, dport=8080, flags="S")
    ret, out = lxc.run("from_netdev", dsr_packet(PEER_NODE, inner))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst, got[IP].ihl, got[TCP].dport) == (CLIENT, POD_A.ip, 5, 8080)
    assert checksums_valid(got)
    root = os.path.dirname(lxc.endpoints.path)
    flow = f"{CLIENT}:45000 -> {POD_A.ip}:8080"
    fes = [v.describe() for k, v in Dsr4Map(root).items() if k.describe() == flow]
    assert fes == [f"{PEER_NODE}:{NODE_PORT}"]
    entries = [c for c in Conntrack(root).connections() if c.sport == 45000]
    assert entries and all(c.dsr for c in entries)
    # the backend's reply: as the frontend, straight to the client
    lxc.endpoints.upsert(on_ifindex(POD_A, 1))
    reply = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst=CLIENT)
        / TCP(sport=8080, dport=45000, flags="SA")
    )
    ret, out = lxc.run("from_container", reply)
    assert ret in (TC_ACT_OK, TC_ACT_REDIRECT)
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == (
        PEER_NODE,
        NODE_PORT,
        CLIENT,
        45000,
    )
    assert checksums_valid(got)
    assert lxc.count("DSR_REPLY") >= 1


def test_dsr_only_from_nodes_and_only_to_local_backends(cluster):
    lxc, _ = cluster
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    inner = IP(src=CLIENT, dst=POD_A.ip) / TCP(sport=45001, dport=8080, flags="S")
    before = lxc.count("UNKNOWN_NODE", DIR_INGRESS)
    ret, _ = lxc.run("from_netdev", dsr_packet("198.18.0.99", inner))
    assert ret == TC_ACT_SHOT and lxc.count("UNKNOWN_NODE", DIR_INGRESS) == before + 1
    elsewhere = IP(src=CLIENT, dst=REMOTE_POD) / TCP(sport=45001, dport=8080, flags="S")
    before = lxc.count("DSR_NO_BACKEND", DIR_INGRESS)
    ret, _ = lxc.run("from_netdev", dsr_packet(PEER_NODE, elsewhere))
    assert ret == TC_ACT_SHOT and lxc.count("DSR_NO_BACKEND", DIR_INGRESS) == before + 1


# ---------- SNAT through the overlay (tc) ----------


@pytest.mark.parametrize("mode", ["ipip", "vxlan", "disabled"])
def test_snat_to_a_backend_on_another_node_and_back(cluster, mode):
    """Through either overlay, or without one (the network routes pods: the
    translated packet is handed to the kernel to route, unencapsulated)."""
    lxc, services = cluster
    lxc.tunnel.set(TunnelConfig.of(mode, 55, 1, NODE_IP, 1500))
    nodeport(services, REMOTE_POD)
    syn = bytes(
        Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01")
        / IP(src=CLIENT, dst=NODE_IP)
        / TCP(sport=46000, dport=NODE_PORT, flags="S")
    )
    ret, out = lxc.run("from_netdev", syn)
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    inner = IP(bytes(got[IP].payload)) if mode == "ipip" else got[IP]
    if mode == "ipip":
        assert (got[IP].src, got[IP].dst, got[IP].proto) == (NODE_IP, PEER_NODE, 4)
    assert (inner.src, inner.dst, inner[TCP].dport) == (NODE_IP, REMOTE_POD, 8080)
    nat_port = inner[TCP].sport
    assert checksums_valid(Ether() / inner)
    assert lxc.count("NODEPORT_SNAT", DIR_INGRESS) >= 1
    # the backend's reply comes back to the node's address and NAT port
    reply = bytes(
        Ether(src=PEER_MAC, dst="02:00:00:00:00:01")
        / IP(src=REMOTE_POD, dst=NODE_IP)
        / TCP(sport=8080, dport=nat_port, flags="SA")
    )
    ret, out = lxc.run("from_netdev", reply)
    assert ret in (TC_ACT_OK, TC_ACT_REDIRECT)
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == (
        NODE_IP,
        NODE_PORT,
        CLIENT,
        46000,
    )
    assert checksums_valid(got)


def test_local_policy_keeps_to_this_nodes_backends(cluster):
    lxc, services = cluster
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    services.node.is_local = lambda ip: ip == POD_A.ip
    nodeport(services, POD_A.ip, REMOTE_POD, policy="local")
    for sport in range(47000, 47020):
        syn = bytes(
            Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01")
            / IP(src=CLIENT, dst=NODE_IP)
            / TCP(sport=sport, dport=NODE_PORT, flags="S")
        )
        ret, out = lxc.run("from_netdev", syn)
        got = Ether(out)
        assert ret == TC_ACT_REDIRECT and (got[IP].src, got[IP].dst) == (CLIENT, POD_A.ip)


# ---------- fragments follow their first ----------


def fragments(
    dst: str, dport: int, src: str = CLIENT, ip_id: int = 4242, size: int = 1480
) -> list[bytes]:
    """A UDP datagram of 3000 bytes in fragments of `size`, as the sender sends them."""

    dgram = IP(src=src, dst=dst, id=ip_id) / UDP(sport=5353, dport=dport) / Raw(b"f" * 3000)
    return [
        bytes(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / p)
        for p in fragment(dgram, size)
    ]


def test_xdp_fragments_reach_the_backend_of_their_first(cluster, dsr_xdp, node_net):
    lxc, services = cluster
    prog, _ = dsr_xdp
    services.upsert(
        Service(
            id=9, ip="10.96.0.90", port=80, protocol="udp", type="nodeport",
            node_port=NODE_PORT, backends=[Backend(REMOTE_POD, 8080), Backend(OTHER_POD, 8080)],
        )
    )  # fmt: skip
    frags = fragments(NODE_IP, NODE_PORT, size=1400)  # room for the DSR header
    with in_netns(node_net):
        outs = [run_xdp(prog, f) for f in frags]
    assert [r for r, _ in outs] == [XDP_REDIRECT] * len(frags)
    outers = [Ether(o)[IP] for _, o in outs]
    assert len({o.dst for o in outers}) == 1  # one backend node for the datagram
    inners = [IP(bytes(o)[28:]) for o in outers]
    assert {i.dst for i in inners} == {REMOTE_POD if outers[0].dst == PEER_NODE else OTHER_POD}
    # the inner datagram reassembles to the client's, DNATed, checksum right

    (whole,) = defragment(inners)
    assert (whole[UDP].sport, whole[UDP].dport, len(whole[Raw].load)) == (5353, 8080, 3000)
    assert checksums_valid(Ether() / IP(bytes(whole)))
    # a fragment whose first was never seen is left to the stack
    before = lxc.count("FRAG_UNKNOWN", DIR_INGRESS)
    stray = fragments(NODE_IP, NODE_PORT, ip_id=999)[1]
    with in_netns(node_net):
        assert run_xdp(prog, stray) == (XDP_PASS, stray)
    assert lxc.count("FRAG_UNKNOWN", DIR_INGRESS) == before + 1


def test_tc_fragments_to_a_local_nodeport_backend(cluster):
    lxc, services = cluster
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    services.upsert(
        Service(
            id=9, ip="10.96.0.90", port=80, protocol="udp", type="nodeport",
            node_port=NODE_PORT, backends=[Backend(POD_A.ip, 8080)],
        )
    )  # fmt: skip
    outs = [lxc.run("from_netdev", f) for f in fragments(NODE_IP, NODE_PORT, ip_id=777)]
    assert [r for r, _ in outs] == [TC_ACT_REDIRECT] * 3

    (whole,) = defragment([Ether(o)[IP] for _, o in outs])
    assert (whole.dst, whole[UDP].dport, len(whole[Raw].load)) == (POD_A.ip, 8080, 3000)
    assert checksums_valid(Ether() / IP(bytes(whole)))


def test_masqueraded_fragments_leave_with_the_same_translation(cluster):
    lxc, _ = cluster
    lxc.endpoints.upsert(POD_A)
    frags = [
        bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac) / Ether(f)[IP])
        for f in fragments("192.0.2.50", 53, src=POD_A.ip, ip_id=555)
    ]
    outs = [lxc.run("to_netdev", f) for f in frags]
    assert [r for r, _ in outs] == [TC_ACT_OK] * 3
    ips = [Ether(o)[IP] for _, o in outs]
    assert {i.src for i in ips} == {NODE_IP}

    (whole,) = defragment(ips)
    assert whole[UDP].sport != 0 and len(whole[Raw].load) == 3000
    assert checksums_valid(Ether() / IP(bytes(whole)))


def test_icmp_errors_about_a_dsr_flow_reach_its_backend(cluster, dsr_xdp, node_net, tmp_path):
    """A router beyond the client reports on a backend's reply (sourced from
    the frontend): the error goes to that backend, quoting it."""
    lxc, services = cluster
    prog, _ = dsr_xdp
    nodeport(services, REMOTE_POD, OTHER_POD)
    syn = from_client(TCP(sport=48000, dport=NODE_PORT, flags="S"))
    err = bytes(
        Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01")
        / IP(src="203.0.113.1", dst=NODE_IP)
        / ICMP(type=3, code=4, nexthopmtu=1280)
        / IP(src=NODE_IP, dst=CLIENT, flags="DF", len=1500)
        / TCP(sport=NODE_PORT, dport=48000, flags="A")
    )
    with in_netns(node_net):
        node = Ether(run_xdp(prog, syn)[1])[IP].dst
        ret, out = run_xdp(prog, err)
    assert ret == XDP_REDIRECT
    outer = Ether(out)[IP]
    assert (outer.dst, outer.proto, outer.ihl) == (node, 4, 7)
    inner = IP(bytes(outer)[28:])
    backend = REMOTE_POD if node == PEER_NODE else OTHER_POD
    assert (inner.src, inner.dst, inner[ICMP].type, inner[ICMP].code) == (
        "203.0.113.1",
        backend,
        3,
        4,
    )
    quoted = inner[IPerror]
    assert (quoted.src, quoted.dst, quoted[TCPerror].sport) == (backend, CLIENT, 8080)
    # every checksum as a receiver computes it
    fresh = IP(bytes(inner))
    del fresh.chksum, fresh[ICMP].chksum, fresh[IPerror].chksum
    again = IP(bytes(fresh))
    assert (again.chksum, again[ICMP].chksum, again[IPerror].chksum) == (
        inner.chksum,
        inner[ICMP].chksum,
        quoted.chksum,
    )
    # an error about no flow of XDP's is the stack's
    other = err.replace(bytes([0xBB, 0x80]), bytes([0xBB, 0x81]))  # another client port
    with in_netns(node_net):
        assert run_xdp(prog, other)[0] == XDP_PASS


@pytest.mark.parametrize(("mode", "overhead"), [("vxlan", 50), ("ipip", 20)])
def test_tc_too_big_for_the_overlay_gets_fragmentation_needed(cluster, mode, overhead):
    lxc, services = cluster
    lxc.tunnel.set(TunnelConfig.of(mode, 55, 1, NODE_IP, 1500))
    nodeport(services, REMOTE_POD)
    big = from_client(TCP(sport=49000, dport=NODE_PORT, flags="A"), size=1500 - 40 - overhead + 1)
    ret, out = lxc.run("from_netdev", big)
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst) == (NODE_IP, CLIENT)
    assert (got[ICMP].type, got[ICMP].code, got[ICMP].nexthopmtu) == (3, 4, 1500 - overhead)
    quoted = got[IPerror]
    assert (quoted.src, quoted.dst, quoted[TCPerror].dport) == (CLIENT, NODE_IP, NODE_PORT)
    assert checksums_valid(got)
    # what fits goes on
    fits = from_client(TCP(sport=49001, dport=NODE_PORT, flags="A"), size=1500 - 40 - overhead)
    assert lxc.run("from_netdev", fits)[0] == TC_ACT_REDIRECT
    assert ICMP not in Ether(lxc.run("from_netdev", fits)[1])
