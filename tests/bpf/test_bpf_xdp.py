"""bpf_xdp.c on crafted frames: prefilter, ICMP echo in place, what passes.
BPF_PROG_TEST_RUN gives an XDP program loopback (ifindex 1) as its device."""

from __future__ import annotations

import pytest
from lxc_harness import DIR_INGRESS, checksums_valid
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.pinned import U32Key
from porin.maps.prefilter_exact import PrefilterAddr, PrefilterCounters, PrefilterExactMap
from porin.maps.prefilter_lpm import PrefilterLpmMap, PrefilterPrefix
from porin.maps.xdp_actions import XdpActionsMap

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
NODE_IP = "198.18.0.11"
PEER = "198.18.0.100"


@pytest.fixture
def xdp(lxc):
    root = lxc.endpoints.path.rsplit("/", 1)[0]
    exact, lpm, actions = PrefilterExactMap(root), PrefilterLpmMap(root), XdpActionsMap(root)
    lxc.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    yield lxc, exact, lpm, actions
    exact.clear()
    lpm.clear()


def frame(src: str = PEER, dst: str = NODE_IP, l4=None) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst)
        / (l4 or TCP(dport=22, flags="S"))
    )


def test_prefilter_drops_listed_sources_exact_and_by_prefix(xdp):
    lxc, exact, lpm, _ = xdp
    before = lxc.count("PREFILTER", DIR_INGRESS)
    assert lxc.run("from_xdp", frame())[0] == XDP_PASS
    exact.put(PrefilterAddr.of(PEER), PrefilterCounters())
    lpm.put(PrefilterPrefix.of("203.0.113.0/24"), PrefilterCounters())
    assert lxc.run("from_xdp", frame())[0] == XDP_DROP
    assert lxc.run("from_xdp", frame(src="203.0.113.7"))[0] == XDP_DROP
    assert lxc.run("from_xdp", frame(src="203.0.114.7"))[0] == XDP_PASS
    assert lxc.count("PREFILTER", DIR_INGRESS) == before + 2
    assert exact.get(PrefilterAddr.of(PEER)).packets == 1
    assert lpm.get(PrefilterPrefix.of("203.0.113.0/24")).packets == 1


def test_echo_to_the_node_is_answered_in_place(xdp):
    lxc, *_ = xdp
    req = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=PEER, dst=NODE_IP, ttl=9)
        / ICMP(type=8, id=7, seq=3)
        / (b"p" * 40)
    )
    before = lxc.count("XDP_ECHO", DIR_INGRESS)
    ret, out = lxc.run("from_xdp", bytes(req))
    assert ret == XDP_TX
    got = Ether(out)
    assert (got.src, got.dst) == ("02:00:00:00:00:02", "02:00:00:00:00:01")
    assert (got[IP].src, got[IP].dst, got[IP].ttl) == (NODE_IP, PEER, 64)
    assert (got[ICMP].type, got[ICMP].id, got[ICMP].seq) == (0, 7, 3)
    assert bytes(got[ICMP].payload) == b"p" * 40
    assert checksums_valid(got)
    assert lxc.count("XDP_ECHO", DIR_INGRESS) == before + 1
    # echo to another address, an echo reply, a fragment: the stack's
    assert lxc.run("from_xdp", frame(dst="198.18.0.12", l4=ICMP()))[0] == XDP_PASS
    assert lxc.run("from_xdp", frame(l4=ICMP(type=0)))[0] == XDP_PASS
    frag = Ether() / IP(src=PEER, dst=NODE_IP, flags="MF") / ICMP()
    assert lxc.run("from_xdp", bytes(frag))[0] == XDP_PASS


def test_what_is_not_ipv4_passes_and_truncated_ipv4_drops(xdp):
    lxc, *_ = xdp
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=PEER, pdst=NODE_IP))
    assert lxc.run("from_xdp", arp)[0] == XDP_PASS
    before = lxc.count("TRUNCATED", DIR_INGRESS)
    assert lxc.run("from_xdp", bytes(Ether(type=0x0800) / b"\x45\x00"))[0] == XDP_DROP
    assert lxc.count("TRUNCATED", DIR_INGRESS) == before + 1


def test_every_action_is_counted(xdp):
    lxc, exact, _, actions = xdp
    before = actions.totals()
    lxc.run("from_xdp", frame())
    exact.put(PrefilterAddr.of(PEER), PrefilterCounters())
    lxc.run("from_xdp", frame())
    lxc.run("from_xdp", bytes(Ether() / IP(src="10.0.0.1", dst=NODE_IP) / ICMP()))
    after = actions.totals()
    assert (
        after["pass"] - before["pass"],
        after["drop"] - before["drop"],
        after["tx"] - before["tx"],
    ) == (1, 1, 1)
    assert actions.get_percpu(U32Key(0)) is not None
