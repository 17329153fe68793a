"""NodePort in XDP with nodePortMode snat (bpf_xdp.c step 7, lib/xdp_snat.h),
on crafted frames: tc makes a flow to a backend on another node, XDP sends
its later packets into the overlay with the very translation tc makes (the
inner packets compared byte for byte), outer headers checked with scapy,
conntrack counting them; and what XDP leaves to tc, with nothing written.
The test's from_xdp is the default build (snat); its FIB lookups run in a
namespace that knows the other nodes' neighbours."""

from __future__ import annotations

import pytest
from lxc_harness import DIR_INGRESS, POD_A, TC_ACT_REDIRECT, checksums_valid, on_ifindex
from nodeport_net import (
    CLIENT,
    NODE_IP,
    NODE_PORT,
    PEER_MAC,
    PEER_NODE,
    REMOTE_POD,
    XDP_PASS,
    XDP_REDIRECT,
    from_client,
    nodeport,
)
from porinlab import in_netns
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from porin.maps.ipcache import IDENTITY_REMOTE_NODE
from porin.maps.metrics import reason_by_name
from porin.maps.tunnel_config import TunnelConfig
from porin.maps.xdp_metrics import XdpMetricsMap
from porin.models import Backend, Service

VXLAN_PORT = 8472


def overlay(lxc, services, mode: str) -> None:
    lxc.tunnel.set(TunnelConfig.of(mode, 55, 1, NODE_IP, 1500))
    nodeport(services, REMOTE_POD)


def inner_of(frame: Ether, mode: str, encapsulated: bool = True) -> IP:
    """The translated packet inside what XDP sent (or, `encapsulated` False,
    what tc hands the VXLAN device: the packet itself)."""
    if mode == "ipip":
        return IP(bytes(frame[IP].payload))
    if not encapsulated:
        return frame[IP]
    return Ether(bytes(frame[VXLAN].payload))[IP]


def flow_entry(lxc, sport: int):
    (entry,) = [c for c in lxc.ct.connections() if c.sport == sport and c.service]
    return entry


def xdp_sent(root: str, reason: str) -> int:
    counts = XdpMetricsMap(root).counts()
    return sum(v.packets for (r, a), v in counts.items() if r == reason_by_name(reason).code)


@pytest.mark.parametrize("mode", ["ipip", "vxlan"])
def test_an_established_flow_goes_into_the_overlay_from_xdp_as_tc_sends_it(cluster, node_net, mode):
    lxc, services = cluster
    root = lxc.endpoints.path.rsplit("/", 1)[0]
    overlay(lxc, services, mode)
    syn = from_client(TCP(sport=47000, dport=NODE_PORT, flags="S", seq=1))
    with in_netns(node_net):
        assert lxc.run("from_xdp", syn)[0] == XDP_PASS  # a new flow is tc's
    assert lxc.run("from_netdev", syn)[0] == TC_ACT_REDIRECT
    ack = from_client(TCP(sport=47000, dport=NODE_PORT, flags="PA", seq=2, ack=9), size=100)
    before = flow_entry(lxc, 47000).tx_packets
    sent = xdp_sent(root, "NODEPORT_SNAT")
    with in_netns(node_net):
        ret, out = lxc.run("from_xdp", ack)
    assert ret == XDP_REDIRECT  # out of node0, the FIB's device (the test runs on lo)
    got = Ether(out)
    assert got.dst == PEER_MAC
    outer = got[IP]
    assert (outer.src, outer.dst, outer.ttl) == (NODE_IP, PEER_NODE, 64)
    assert checksums_valid(Ether(bytes(got)))
    if mode == "ipip":
        assert outer.proto == 4 and outer.flags.DF  # the client's DF kept
        assert outer.len == len(ack) - 14 + 20
    else:
        udp = got[UDP]
        assert (udp.dport, udp.chksum, outer.flags.DF) == (VXLAN_PORT, 0, 0)
        assert 32768 <= udp.sport < 61000
        assert (outer.len, udp.len) == (len(out) - 14, len(out) - 34)
        assert (got[VXLAN].flags, got[VXLAN].vni) == (0x08, IDENTITY_REMOTE_NODE)
        # the whole frame inside, its Ethernet header as the client sent it
        assert Ether(bytes(got[VXLAN].payload)).src == Ether(ack).src
    inner = inner_of(got, mode)
    assert (inner.src, inner.dst, inner[TCP].dport) == (NODE_IP, REMOTE_POD, 8080)
    assert checksums_valid(Ether() / inner)
    assert flow_entry(lxc, 47000).tx_packets == before + 1
    assert xdp_sent(root, "NODEPORT_SNAT") == sent + 1
    # tc, given the same packet, makes the same one
    ret, out = lxc.run("from_netdev", ack)
    assert ret == TC_ACT_REDIRECT
    assert bytes(inner_of(Ether(out), mode, encapsulated=False)) == bytes(inner)
    # and the backend's reply, through tc, reaches the client from the frontend
    reply = bytes(
        Ether(src=PEER_MAC, dst="02:00:00:00:00:01")
        / IP(src=REMOTE_POD, dst=NODE_IP)
        / TCP(sport=8080, dport=inner[TCP].sport, flags="A")
    )
    back = Ether(lxc.run("from_netdev", reply)[1])
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (
        NODE_IP,
        NODE_PORT,
        CLIENT,
        47000,
    )


def test_udp_of_an_established_flow_too(cluster, node_net):
    lxc, services = cluster
    lxc.tunnel.set(TunnelConfig.of("ipip", 55, 1, NODE_IP, 1500))
    services.upsert(
        Service(id=9, ip="10.96.0.90", port=53, protocol="udp", type="nodeport",
                node_port=NODE_PORT, backends=[Backend(REMOTE_POD, 5353)])
    )  # fmt: skip
    first = from_client(UDP(sport=47100, dport=NODE_PORT), size=30)
    assert lxc.run("from_netdev", first)[0] == TC_ACT_REDIRECT
    with in_netns(node_net):
        ret, out = lxc.run("from_xdp", from_client(UDP(sport=47100, dport=NODE_PORT), size=31))
    assert ret == XDP_REDIRECT
    inner = inner_of(Ether(out), "ipip")
    assert (inner.src, inner.dst, inner[UDP].dport, len(inner[UDP].payload)) == (
        NODE_IP,
        REMOTE_POD,
        5353,
        31,
    )
    assert checksums_valid(Ether() / inner)


def test_what_xdp_leaves_to_tc_in_snat_mode(cluster, node_net):
    lxc, services = cluster
    overlay(lxc, services, "ipip")
    assert (
        lxc.run("from_netdev", from_client(TCP(sport=47200, dport=NODE_PORT, flags="S")))[0]
        == TC_ACT_REDIRECT
    )
    ack = TCP(sport=47200, dport=NODE_PORT, flags="A")
    cases = {
        # a flow this node never saw: tc balances it (Maglev or the flow table)
        "unseen flow": from_client(TCP(sport=47201, dport=NODE_PORT, flags="A")),
        # a SYN reusing the tuple: tc may re-point it
        "syn": from_client(TCP(sport=47200, dport=NODE_PORT, flags="S")),
        # too big with the 20 bytes of IPIP: tc answers fragmentation needed
        "too big": from_client(ack, size=1500 - 40 - 20 + 1),
        # fragments: tc follows them
        "first fragment": bytes(
            fragment(Ether(from_client(ack, size=600, df=False))[IP], fragsize=256)[0]
        ),
    }
    with in_netns(node_net):
        for name, pkt in cases.items():
            if name == "first fragment":
                pkt = bytes(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01")) + pkt
            before = {c.sport: c.tx_packets for c in lxc.ct.connections()}
            assert lxc.run("from_xdp", pkt)[0] == XDP_PASS, name
            after = {c.sport: c.tx_packets for c in lxc.ct.connections()}
            assert after == before, f"{name}: XDP wrote conntrack"
        # no overlay configured: the stack's way, tc's
        lxc.tunnel.set(TunnelConfig.of("disabled", 0, 1, NODE_IP, 1500))
        assert lxc.run("from_xdp", from_client(ack))[0] == XDP_PASS
        lxc.tunnel.set(TunnelConfig.of("ipip", 55, 1, NODE_IP, 1500))
        assert lxc.run("from_xdp", from_client(ack))[0] == XDP_REDIRECT
        # the flow's backend gone: tc balances it afresh
        nodeport(services, "10.244.3.5")
        assert lxc.run("from_xdp", from_client(ack))[0] == XDP_PASS


def test_a_local_backend_is_left_to_tc(cluster, node_net):
    lxc, services = cluster
    lxc.tunnel.set(TunnelConfig.of("ipip", 55, 1, NODE_IP, 1500))
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    services.node.is_local = lambda ip: ip == POD_A.ip
    nodeport(services, POD_A.ip)
    syn = from_client(TCP(sport=47300, dport=NODE_PORT, flags="S"))
    lxc.run("from_netdev", syn)
    assert lxc.count("NODEPORT", DIR_INGRESS) >= 1
    with in_netns(node_net):
        ret, _ = lxc.run("from_xdp", from_client(TCP(sport=47300, dport=NODE_PORT, flags="A")))
    assert ret == XDP_PASS
