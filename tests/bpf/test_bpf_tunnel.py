"""Overlay encapsulation and decapsulation on crafted packets, both modes."""

from __future__ import annotations

import tempfile

import pytest
from lxc_harness import (
    POD_A,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    checksums_valid,
    on_ifindex,
)
from scapy.layers.inet import ICMP, IP, TCP, IPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from porin.daemon.services import ServiceManager
from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.ipcache import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IpcacheEntry
from porin.maps.tunnel_config import TunnelConfig
from porin.models import Backend, Service

NODE_IP, PEER_NODE = "198.18.0.11", "198.18.0.12"
REMOTE_POD = "10.244.2.5"
IDENT_A = 300


@pytest.fixture
def overlay(lxc):
    lxc.endpoints.upsert(
        type(POD_A)(POD_A.ip, 1, POD_A.endpoint_id, POD_A.mac, POD_A.node_mac, identity=IDENT_A)
    )
    lxc.ipcache.upsert(IpcacheEntry("10.244.2.0/24", 0, PEER_NODE))
    lxc.ipcache.upsert(IpcacheEntry(f"{REMOTE_POD}/32", 400, PEER_NODE))
    lxc.ipcache.upsert(IpcacheEntry(f"{PEER_NODE}/32", IDENTITY_REMOTE_NODE, "", node=True))
    lxc.ipcache.upsert(IpcacheEntry(f"{NODE_IP}/32", IDENTITY_HOST, "", node=True))
    return lxc


def from_a(l3) -> bytes:
    return bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac) / l3)


def test_vxlan_mode_hands_the_packet_to_the_vxlan_device(overlay):
    overlay.tunnel.set(TunnelConfig.of("vxlan", 55, 1, NODE_IP, 1500))
    before = overlay.count("TUNNELED")
    pkt = IP(src=POD_A.ip, dst=REMOTE_POD, ttl=64) / TCP(sport=1000, dport=80, flags="S")
    ret, out = overlay.run("from_container", from_a(pkt))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst, got[IP].ttl) == (POD_A.ip, REMOTE_POD, 63)
    assert checksums_valid(got)
    assert overlay.count("TUNNELED") == before + 1
    # a prefix only known as another node's pod CIDR is tunneled too
    ret, _ = overlay.run("from_container", from_a(IP(src=POD_A.ip, dst="10.244.2.77") / ICMP()))
    assert ret == TC_ACT_REDIRECT


def test_ipip_encapsulation_is_standard_ipip(overlay):
    overlay.tunnel.set(TunnelConfig.of("ipip", 0, 1, NODE_IP, 1500))
    inner = (
        IP(src=POD_A.ip, dst=REMOTE_POD, ttl=64, flags="DF")
        / TCP(sport=1001, dport=80)
        / Raw(b"x" * 100)
    )
    ret, out = overlay.run("from_container", from_a(inner))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    outer = got[IP]
    assert (outer.src, outer.dst, outer.proto, outer.ttl) == (NODE_IP, PEER_NODE, 4, 64)
    assert outer.flags.DF
    assert outer.len == 20 + len(inner)
    wire = outer.chksum
    fresh = IP(bytes(outer)[:20])
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == wire
    carried = IP(bytes(outer.payload))
    assert (carried.src, carried.dst, carried.ttl) == (POD_A.ip, REMOTE_POD, 63)
    assert bytes(carried[TCP].payload) == b"x" * 100
    assert checksums_valid(Ether() / carried)


def test_ipip_from_a_node_is_decapsulated_and_delivered(overlay):
    overlay.tunnel.set(TunnelConfig.of("ipip", 0, 1, NODE_IP, 1500))
    overlay.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    overlay.endpoints.upsert(on_ifindex(POD_A, 76))
    inner = IP(src=REMOTE_POD, dst=POD_A.ip, ttl=63) / TCP(sport=80, dport=1001, flags="SA")
    frame = bytes(Ether() / IP(src=PEER_NODE, dst=NODE_IP, proto=4) / inner)
    before = overlay.count("FROM_TUNNEL", direction=1)
    ret, out = overlay.run("from_netdev", frame)
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert got[IP].proto == 6 and (got[IP].src, got[IP].dst, got[IP].ttl) == (
        REMOTE_POD,
        POD_A.ip,
        62,
    )
    assert (got.dst, got.src) == (POD_A.mac, POD_A.node_mac)
    assert checksums_valid(got)
    assert overlay.count("FROM_TUNNEL", direction=1) == before + 1


def test_ipip_from_unknown_node_or_claiming_the_host_is_dropped(overlay):
    overlay.tunnel.set(TunnelConfig.of("ipip", 0, 1, NODE_IP, 1500))
    overlay.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    overlay.endpoints.upsert(on_ifindex(POD_A, 76))
    before = overlay.count("UNKNOWN_NODE", direction=1)
    stranger = bytes(
        Ether()
        / IP(src="198.18.0.99", dst=NODE_IP, proto=4)
        / IP(src=REMOTE_POD, dst=POD_A.ip)
        / ICMP()
    )
    assert overlay.run("from_netdev", stranger)[0] == TC_ACT_SHOT
    assert overlay.count("UNKNOWN_NODE", direction=1) == before + 1
    before = overlay.count("INVALID_IDENTITY", direction=1)
    as_host = bytes(
        Ether() / IP(src=PEER_NODE, dst=NODE_IP, proto=4) / IP(src=NODE_IP, dst=POD_A.ip) / ICMP()
    )
    assert overlay.run("from_netdev", as_host)[0] == TC_ACT_SHOT
    assert overlay.count("INVALID_IDENTITY", direction=1) == before + 1


def test_overlay_packet_without_tunnel_metadata_is_dropped(overlay):
    before = overlay.count("NO_TUNNEL_KEY", direction=1)
    ret, _ = overlay.run("from_overlay", bytes(Ether() / IP(src=REMOTE_POD, dst=POD_A.ip) / ICMP()))
    assert ret == TC_ACT_SHOT
    assert overlay.count("NO_TUNNEL_KEY", direction=1) == before + 1


@pytest.mark.parametrize("mode,mtu", [("vxlan", 1450), ("ipip", 1480)])
def test_too_big_for_the_tunnel_gets_fragmentation_needed(overlay, mode, mtu):
    overlay.tunnel.set(TunnelConfig.of(mode, 55, 1, NODE_IP, 1500))
    before = overlay.count("FRAG_NEEDED")
    big = (
        IP(src=POD_A.ip, dst=REMOTE_POD, flags="DF") / TCP(sport=1002, dport=80) / Raw(b"y" * 1460)
    )
    ret, out = overlay.run("from_container", from_a(big))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert got.dst == POD_A.mac and got[IP].dst == POD_A.ip
    assert (got[ICMP].type, got[ICMP].code, got[ICMP].nexthopmtu) == (3, 4, mtu)
    assert got[IPerror].src == POD_A.ip and checksums_valid(got)
    assert overlay.count("FRAG_NEEDED") == before + 1
    # without DF it is left to fragment
    ok = IP(src=POD_A.ip, dst=REMOTE_POD) / TCP(sport=1003, dport=80) / Raw(b"y" * 1460)
    assert overlay.run("from_container", from_a(ok))[0] == TC_ACT_REDIRECT
    assert overlay.count("FRAG_NEEDED") == before + 1


def test_fragmentation_needed_for_a_service_flow_quotes_the_frontend(overlay):
    """A service flow to a backend behind the tunnel: the client must see the
    error about its own packet (to the frontend), or path MTU discovery stalls."""
    overlay.tunnel.set(TunnelConfig.of("vxlan", 55, 1, NODE_IP, 1500))
    with tempfile.TemporaryDirectory() as state:
        ServiceManager(overlay.lb, state).upsert(
            Service(id=1, ip="10.96.0.10", port=80, backends=[Backend(REMOTE_POD, 8080)])
        )
        syn = IP(src=POD_A.ip, dst="10.96.0.10") / TCP(sport=1004, dport=80, flags="S")
        assert overlay.run("from_container", from_a(syn))[0] == TC_ACT_REDIRECT
        big = (
            IP(src=POD_A.ip, dst="10.96.0.10", flags="DF")
            / TCP(sport=1004, dport=80, flags="A")
            / Raw(b"y" * 1460)
        )
        ret, out = overlay.run("from_container", from_a(big))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[ICMP].type, got[ICMP].code, got[ICMP].nexthopmtu) == (3, 4, 1450)
    assert (got[IP].src, got[IP].dst) == ("10.96.0.10", POD_A.ip)
    assert (got[IPerror].src, got[IPerror].dst) == (POD_A.ip, "10.96.0.10")
    assert bytes(got[IPerror].payload)[:4] == (1004).to_bytes(2, "big") + (80).to_bytes(2, "big")
    assert checksums_valid(got)


def test_no_tunnel_configured_means_host_stack(overlay):
    pkt = from_a(IP(src=POD_A.ip, dst=REMOTE_POD) / ICMP())
    assert overlay.run("from_container", pkt) == (TC_ACT_OK, pkt)
