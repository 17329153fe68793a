"""bpf_xdp.c on crafted frames: prefilter, ICMP echo in place, what passes.
BPF_PROG_TEST_RUN gives an XDP program loopback (ifindex 1) as its device."""

from __future__ import annotations

import pytest
from lxc_harness import DIR_INGRESS, checksums_valid
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from porin.daemon.prefilter import Prefilter, normalize
from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.metrics import MetricsValue, reason_by_name
from porin.maps.prefilter_slots import slot_of
from porin.maps.xdp_metrics import XdpMetricsKey, XdpMetricsMap

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
NODE_IP = "198.18.0.11"
PEER = "198.18.0.100"


class Listed:
    """The prefilter as the agent programs it (daemon/prefilter.py: entries
    and their indexes), without a kvstore."""

    def __init__(self, root: str) -> None:
        self.pf = Prefilter(root, [], lambda: {})

    def set(self, *cidrs: str) -> None:
        self.pf.stored = {normalize(c) for c in cidrs}
        self.pf.sync()

    def packets(self) -> dict[str, int]:
        return {r["cidr"]: r["packets"] for r in self.pf.list()}


@pytest.fixture
def xdp(lxc):
    root = lxc.endpoints.path.rsplit("/", 1)[0]
    listed, actions = Listed(root), XdpMetricsMap(root)
    listed.set()
    lxc.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    yield lxc, listed, actions
    listed.set()


def frame(src: str = PEER, dst: str = NODE_IP, l4=None) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst)
        / (l4 or TCP(dport=22, flags="S"))
    )


def test_prefilter_drops_listed_sources_exact_and_by_prefix(xdp):
    lxc, listed, _ = xdp
    before = lxc.count("PREFILTER", DIR_INGRESS)
    assert lxc.run("from_xdp", frame())[0] == XDP_PASS
    listed.set(PEER, "203.0.113.0/24", "10.0.0.0/8")
    assert lxc.run("from_xdp", frame())[0] == XDP_DROP
    assert lxc.run("from_xdp", frame(src="203.0.113.7"))[0] == XDP_DROP
    assert lxc.run("from_xdp", frame(src="10.200.1.1"))[0] == XDP_DROP  # a /8: 256 /16s
    assert lxc.run("from_xdp", frame(src="203.0.114.7"))[0] == XDP_PASS  # another /24, same /16
    assert lxc.run("from_xdp", frame(src="198.51.100.1"))[0] == XDP_PASS
    assert lxc.count("PREFILTER", DIR_INGRESS) == before + 3
    assert listed.packets() == {f"{PEER}/32": 1, "203.0.113.0/24": 1, "10.0.0.0/8": 1}
    # taken out again: nothing of it stays in the datapath
    listed.set("203.0.113.0/24")
    assert lxc.run("from_xdp", frame())[0] == XDP_PASS
    assert lxc.run("from_xdp", frame(src="10.200.1.1"))[0] == XDP_PASS
    assert listed.packets() == {"203.0.113.0/24": 1}


def test_addresses_sharing_a_slot_are_all_dropped_and_counted(xdp):
    lxc, listed, _ = xdp
    bits = listed.pf.bits
    first = "192.0.2.1"
    candidates = (f"100.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(1 << 22))
    twins = [ip for ip in candidates if slot_of(ip, bits) == slot_of(first, bits)][:2]
    assert len(twins) == 2
    listed.set(first, *twins)
    for src in (first, *twins, first):
        assert lxc.run("from_xdp", frame(src=src))[0] == XDP_DROP
    assert lxc.run("from_xdp", frame(src="192.0.2.2"))[0] == XDP_PASS
    got = listed.packets()
    assert got == {f"{first}/32": 2, f"{twins[0]}/32": 1, f"{twins[1]}/32": 1}
    # the slot's holder goes: the others still drop (from the hash)
    listed.set(*twins)
    for src in twins:
        assert lxc.run("from_xdp", frame(src=src))[0] == XDP_DROP
    assert lxc.run("from_xdp", frame(src=first))[0] == XDP_PASS


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


def test_every_verdict_is_counted_once_by_reason_and_action(xdp):
    lxc, listed, actions = xdp
    pf, echo, passed = (reason_by_name(n).code for n in ("PREFILTER", "XDP_ECHO", "XDP_PASS"))
    before, by_pair = actions.totals(), actions.counts()
    seen = {r: lxc.count(n, DIR_INGRESS)
            for r, n in ((pf, "PREFILTER"), (echo, "XDP_ECHO"))}  # fmt: skip
    lxc.run("from_xdp", frame())
    listed.set(PEER)
    dropped = frame()
    lxc.run("from_xdp", dropped)
    ping = bytes(Ether() / IP(src="10.0.0.1", dst=NODE_IP) / ICMP())
    lxc.run("from_xdp", ping)
    after = actions.totals()
    assert {k: after[k] - before[k] for k in after} == {
        "aborted": 0, "drop": 1, "pass": 1, "tx": 1, "redirect": 0
    }  # fmt: skip

    def grew(reason: int, action: int) -> tuple[int, int]:
        zero = MetricsValue()
        now, was = actions.counts().get((reason, action), zero), by_pair.get((reason, action), zero)
        return now.packets - was.packets, now.bytes - was.bytes

    assert grew(pf, XDP_DROP) == (1, len(dropped))
    assert grew(echo, XDP_TX) == (1, len(ping))
    assert grew(passed, XDP_PASS)[0] == 1
    # the metrics of every program include XDP's, as (reason, ingress)
    assert lxc.count("PREFILTER", DIR_INGRESS) == seen[pf] + 1
    assert lxc.count("XDP_ECHO", DIR_INGRESS) == seen[echo] + 1
    assert actions.get_percpu(XdpMetricsKey.of(pf, XDP_DROP)) is not None


def test_prefixes_are_dropped_through_the_index_and_the_trie_alike(xdp):
    lxc, listed, _ = xdp
    index = listed.pf.index
    listed.set("10.0.0.0/8", "10.1.16.0/20", "192.0.2.128/25")
    assert len(index.l24.blocks()) == 2  # 10.1/16 (the /20) and 192.0/16 (the /25)
    cases = {"10.1.17.1": XDP_DROP, "10.1.40.1": XDP_DROP, "10.9.0.1": XDP_DROP,
             "192.0.2.200": XDP_DROP, "192.0.2.100": XDP_PASS, "192.0.3.1": XDP_PASS}  # fmt: skip
    for src, want in cases.items():
        assert lxc.run("from_xdp", frame(src=src))[0] == want, src
    assert listed.packets() == {"10.0.0.0/8": 2, "10.1.16.0/20": 1, "192.0.2.128/25": 1}
    # with no block left, a /16 that needs one asks the trie: the same verdicts
    listed.set()
    assert index.l24.blocks() == {} and index.l16.values() == {}
    index.blocks = 1
    listed.set("10.0.0.0/8", "10.1.16.0/20", "192.0.2.128/25")
    assert len(index.l24.blocks()) == 1
    for src, want in cases.items():
        assert lxc.run("from_xdp", frame(src=src))[0] == want, src
    assert listed.packets() == {"10.0.0.0/8": 2, "10.1.16.0/20": 1, "192.0.2.128/25": 1}
    # an entry that stays keeps its counter; one that comes back starts at 0
    listed.set("10.0.0.0/8")
    assert index.l24.blocks() == {}
    listed.set("10.0.0.0/8", "192.0.2.128/25")
    assert listed.packets() == {"10.0.0.0/8": 2, "192.0.2.128/25": 0}
