"""Local delivery (bpf/lib/lxc.h): straight into the pod's namespace, or
through its veth for a flow whose bulk packets come from several CPUs."""

from __future__ import annotations

import pytest
from lxc_harness import (
    DIR_EGRESS,
    DIR_INGRESS,
    POD_A,
    POD_B,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    on_ifindex,
)
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from porin.maps.conntrack import CT_F_MULTI_CPU, CtKey
from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.ipcache import IDENTITY_REMOTE_NODE, IpcacheEntry
from porin.maps.tunnel_config import TunnelConfig

MARK_DELIVERED = 0x5A0F0000


@pytest.fixture
def pods(lxc):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(POD_B)
    return lxc


def data(flags: str = "A", sport: int = 5001) -> bytes:
    pkt = IP(src=POD_A.ip, dst=POD_B.ip) / TCP(sport=sport, dport=80, flags=flags)
    return bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac) / pkt / (b"x" * 1000))


def entry(lxc, sport: int = 5001):
    return lxc.ct.get(CtKey.of(POD_A.ip, POD_B.ip, sport, 80, 6))


def set_bulk_cpu(lxc, cpu_plus_one: int, sport: int = 5001) -> None:
    key = CtKey.of(POD_A.ip, POD_B.ip, sport, 80, 6)
    e = lxc.ct.get(key)
    e.bulk_cpu = cpu_plus_one
    lxc.ct.put(key, e)


def test_single_cpu_bulk_flows_go_straight_in(pods):
    assert pods.run_skb("from_container", data("S"))[0] == TC_ACT_REDIRECT
    for _ in range(3):  # every GSO packet from this one CPU
        ret, _, mark = pods.run_skb("from_container", data(), gso_segs=8)
        assert (ret, mark) == (TC_ACT_REDIRECT, 0)  # bpf_redirect_peer: no handover mark
    e = entry(pods)
    assert e.bulk_cpu != 0 and not e.flags & CT_F_MULTI_CPU


def test_bulk_from_a_second_cpu_moves_the_flow_to_the_veth_for_good(pods):
    assert pods.run_skb("from_container", data("S"))[0] == TC_ACT_REDIRECT
    assert pods.run_skb("from_container", data(), gso_segs=8)[0] == TC_ACT_REDIRECT
    here = entry(pods).bulk_cpu
    set_bulk_cpu(pods, 1 + (here % 200))  # as if the last one came from another CPU
    fwd_out, fwd_in = pods.count("FORWARDED", DIR_EGRESS), pods.count("FORWARDED", DIR_INGRESS)
    ret, out, mark = pods.run_skb("from_container", data(), gso_segs=8)
    assert (ret, mark) == (TC_ACT_REDIRECT, MARK_DELIVERED)
    got = Ether(out)
    assert (got.dst, got.src, got[IP].ttl) == (POD_B.mac, POD_B.node_mac, 63)
    assert entry(pods).flags & CT_F_MULTI_CPU
    # recorded once, from both endpoints' points of view
    assert pods.count("FORWARDED", DIR_EGRESS) == fwd_out + 1
    assert pods.count("FORWARDED", DIR_INGRESS) == fwd_in + 1
    # every later packet of the flow follows, small ones and replies too (no overtaking)
    assert pods.run_skb("from_container", data())[2] == MARK_DELIVERED
    other = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst=POD_B.ip)
        / TCP(sport=5002, dport=80, flags="S")
    )
    assert pods.run_skb("from_container", other)[2] == 0  # other flows are not affected


def test_to_container_lets_a_handed_over_packet_through_unrecorded(pods):
    before = {(m.reason, m.direction): m.packets for m in pods.metrics.metrics()}
    handed = bytes(
        Ether(src=POD_B.node_mac, dst=POD_B.mac)
        / IP(src=POD_A.ip, dst=POD_B.ip, ttl=63)
        / TCP(sport=5001, dport=80, flags="A")
    )
    ret, out, mark = pods.run_skb("to_container", handed, mark=MARK_DELIVERED)
    assert (ret, out, mark) == (TC_ACT_OK, handed, 0)
    assert {(m.reason, m.direction): m.packets for m in pods.metrics.metrics()} == before
    assert entry(pods) is None  # no conntrack either: from_container did it


def test_traffic_from_the_tunnel_goes_straight_in_whatever_its_cpus(lxc):
    """The veth detour is for a pod's own flows; a flow arriving from another
    node (here IPIP) keeps the direct path even when marked multi-CPU."""
    node_ip, peer_node, remote = "198.18.0.11", "198.18.0.12", "10.244.2.5"
    lxc.tunnel.set(TunnelConfig.of("ipip", 0, 1, node_ip, 1500))
    lxc.host_devices.put(Ifindex(1), HostDevice.of(node_ip, masquerade=True))
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    lxc.ipcache.upsert(IpcacheEntry(f"{remote}/32", 400, peer_node))
    lxc.ipcache.upsert(IpcacheEntry(f"{peer_node}/32", IDENTITY_REMOTE_NODE, "", node=True))

    def from_peer(flags: str) -> bytes:
        inner = IP(src=remote, dst=POD_A.ip) / TCP(sport=7000, dport=80, flags=flags)
        return bytes(Ether() / IP(src=peer_node, dst=node_ip, proto=4) / inner / (b"x" * 1000))

    assert lxc.run_skb("from_netdev", from_peer("S"))[0] == TC_ACT_REDIRECT
    key = CtKey.of(remote, POD_A.ip, 7000, 80, 6)
    e = lxc.ct.get(key)
    e.flags |= CT_F_MULTI_CPU
    lxc.ct.put(key, e)
    ret, _, mark = lxc.run_skb("from_netdev", from_peer("A"), gso_segs=8)
    assert (ret, mark) == (TC_ACT_REDIRECT, 0)
