"""Network policy in the datapath (bpf/lib/policy.h), on crafted packets.

POD_A (identity 300) talks to POD_B (identity 301) on the same node, so a
packet passes the sender's egress and the receiver's ingress policy in one
run of from_container. BPF_PROG_TEST_RUN runs with ifindex 1: whoever sends
is put on ifindex 1 first.
"""

from __future__ import annotations

import pytest
from lxc_harness import (
    DIR_EGRESS,
    DIR_INGRESS,
    POD_A,
    POD_B,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.l2 import Ether

from porin.maps.conntrack import CtKey
from porin.maps.endpoints import (
    ENDPOINT_F_POLICY_EGRESS,
    ENDPOINT_F_POLICY_INGRESS,
    EndpointEntry,
)
from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.ipcache import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IpcacheEntry
from porin.maps.policy import PolicyKey, PolicyMapKey
from porin.maps.tunnel_config import TunnelConfig
from porin.models import Backend, Service

ID_A, ID_B = 300, 301
CIDR_BASE = 1 << 24


def ep(
    base: EndpointEntry, ifindex: int, ident: int, flags: int = 0, rev: int = 0
) -> EndpointEntry:
    return EndpointEntry(
        base.ip, ifindex, base.endpoint_id, base.mac, base.node_mac, ident, flags, rev
    )


@pytest.fixture
def pol(lxc):
    """A sends (ifindex 1); B is isolated for ingress at revision 5."""
    lxc.endpoints.upsert(ep(POD_A, 1, ID_A))
    lxc.endpoints.upsert(ep(POD_B, 77, ID_B, ENDPOINT_F_POLICY_INGRESS, 5))
    for e, ident in ((POD_A, ID_A), (POD_B, ID_B)):
        lxc.ipcache.upsert(IpcacheEntry(f"{e.ip}/32", ident, ""))
    return lxc


def allow(
    lxc,
    ep_id: int,
    direction: str,
    ident: int,
    proto: int = 0,
    port: int = 0,
    bits: int = 0,
    rule: int = 7,
    deny: bool = False,
) -> PolicyMapKey:
    k = PolicyMapKey(ep_id, direction, ident, proto, port, bits if proto and port else 0)
    if proto and port and not bits:
        k = PolicyMapKey(ep_id, direction, ident, proto, port, 16)
    lxc.policy.write(k, rule, deny)
    return k


def syn(
    sport: int = 40000,
    dport: int = 80,
    src: EndpointEntry = POD_A,
    dst: EndpointEntry = POD_B,
    flags: str = "S",
) -> bytes:
    return bytes(
        Ether(src=src.mac, dst=src.node_mac)
        / IP(src=src.ip, dst=dst.ip)
        / TCP(sport=sport, dport=dport, flags=flags)
    )


def test_an_isolated_endpoint_drops_what_no_rule_allows(pol):
    before = pol.count("POLICY", DIR_INGRESS)
    assert pol.run("from_container", syn())[0] == TC_ACT_SHOT
    assert pol.count("POLICY", DIR_INGRESS) == before + 1  # the receiver's ingress
    # and every later packet of it too: nothing was allowed, nothing cached
    assert pol.run("from_container", syn(flags="A"))[0] == TC_ACT_SHOT
    assert pol.count("POLICY", DIR_INGRESS) == before + 2
    # A is not isolated: its traffic to anyone else is untouched
    elsewhere = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst="10.244.0.99")
        / TCP(sport=1, dport=80, flags="S")
    )
    assert pol.run("from_container", elsewhere)[0] == TC_ACT_OK


def test_allow_by_identity_and_port_and_the_allow_is_cached(pol):
    k = allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 80)
    assert pol.run("from_container", syn())[0] == TC_ACT_REDIRECT
    assert pol.run("from_container", syn(dport=81))[0] == TC_ACT_SHOT  # another port
    e = pol.ct.get(CtKey.of(POD_A.ip, POD_B.ip, 40000, 80, 6))
    assert e is not None and e.ingress_rev == 5  # decided at B's revision
    hits = pol.policy.get(k.to_c())
    assert (hits.packets, hits.rule_id) == (1, 7)
    # established packets pay no lookup while the revision holds
    for _ in range(3):
        assert pol.run("from_container", syn(flags="A"))[0] == TC_ACT_REDIRECT
    assert pol.policy.get(k.to_c()).packets == 1


def test_other_identities_and_protocols_are_not_allowed(pol):
    allow(pol, POD_B.endpoint_id, "ingress", 999, 6, 80)
    allow(pol, POD_B.endpoint_id, "ingress", ID_A, 17, 80)
    assert pol.run("from_container", syn())[0] == TC_ACT_SHOT
    udp = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst=POD_B.ip)
        / UDP(sport=5, dport=80)
    )
    assert pol.run("from_container", udp)[0] == TC_ACT_REDIRECT


def test_port_ranges_are_prefixes(pol):
    allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 1024, bits=6)  # 1024-2047
    got = {
        p: pol.run("from_container", syn(sport=30000 + p % 1000, dport=p))[0]
        for p in (1023, 1024, 1500, 2047, 2048)
    }
    assert got == {
        1023: TC_ACT_SHOT,
        1024: TC_ACT_REDIRECT,
        1500: TC_ACT_REDIRECT,
        2047: TC_ACT_REDIRECT,
        2048: TC_ACT_SHOT,
    }


def test_any_identity_and_any_protocol(pol):
    allow(pol, POD_B.endpoint_id, "ingress", 0)
    assert pol.run("from_container", syn(dport=9999))[0] == TC_ACT_REDIRECT
    icmp = bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac) / IP(src=POD_A.ip, dst=POD_B.ip) / ICMP())
    assert pol.run("from_container", icmp)[0] == TC_ACT_REDIRECT


def test_cidr_rules_match_pod_addresses_and_except_carves_out(pol):
    pol.policy_cidr.write("10.244.0.0/24", CIDR_BASE)
    allow(pol, POD_B.endpoint_id, "ingress", CIDR_BASE)
    assert pol.run("from_container", syn(sport=40010))[0] == TC_ACT_REDIRECT
    pol.policy_cidr.write(f"{POD_A.ip}/32", CIDR_BASE + 1)  # an except: its own identity, no entry
    assert pol.run("from_container", syn(sport=40011))[0] == TC_ACT_SHOT


def test_deny_wins_over_allow_whichever_lookup_finds_it(pol):
    allow(pol, POD_B.endpoint_id, "ingress", 0)  # everyone, everything
    allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 80, rule=9, deny=True)
    before = pol.count("POLICY_DENY", DIR_INGRESS)
    assert pol.run("from_container", syn())[0] == TC_ACT_SHOT
    assert pol.count("POLICY_DENY", DIR_INGRESS) == before + 1
    assert pol.run("from_container", syn(dport=81))[0] == TC_ACT_REDIRECT
    # a deny for any identity beats an allow of the sender's own
    pol.policy.clear()
    allow(pol, POD_B.endpoint_id, "ingress", ID_A)
    allow(pol, POD_B.endpoint_id, "ingress", 0, 6, 443, deny=True)
    assert pol.run("from_container", syn(dport=443))[0] == TC_ACT_SHOT
    pol.policy_cidr.write("10.244.0.0/16", CIDR_BASE)
    allow(pol, POD_B.endpoint_id, "ingress", CIDR_BASE, 6, 22, deny=True)
    assert pol.run("from_container", syn(dport=22))[0] == TC_ACT_SHOT
    assert pol.run("from_container", syn(dport=23))[0] == TC_ACT_REDIRECT


def test_egress_policy_of_the_sender(pol):
    pol.endpoints.upsert(ep(POD_A, 1, ID_A, ENDPOINT_F_POLICY_EGRESS, 3))
    allow(pol, POD_B.endpoint_id, "ingress", 0)
    before = pol.count("POLICY", DIR_EGRESS)
    assert pol.run("from_container", syn())[0] == TC_ACT_SHOT
    assert pol.count("POLICY", DIR_EGRESS) == before + 1
    allow(pol, POD_A.endpoint_id, "egress", ID_B, 6, 80)
    assert pol.run("from_container", syn(sport=40001))[0] == TC_ACT_REDIRECT
    e = pol.ct.get(CtKey.of(POD_A.ip, POD_B.ip, 40001, 80, 6))
    assert e.egress_rev == 3


def test_egress_sees_the_backend_after_service_translation(pol, services):
    pol.endpoints.upsert(ep(POD_A, 1, ID_A, ENDPOINT_F_POLICY_EGRESS, 3))
    allow(pol, POD_B.endpoint_id, "ingress", 0)
    allow(pol, POD_A.endpoint_id, "egress", ID_B, 6, 8080)
    services.upsert(
        Service(id=1, ip="10.96.0.10", port=80, protocol="tcp", backends=[Backend(POD_B.ip, 8080)])
    )
    to_vip = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst="10.96.0.10")
        / TCP(sport=41000, dport=80, flags="S")
    )
    ret, out = pol.run("from_container", to_vip)
    assert ret == TC_ACT_REDIRECT and Ether(out)[TCP].dport == 8080
    assert (
        pol.run("from_container", syn(dport=80))[0] == TC_ACT_SHOT
    )  # the backend's port 80 directly


def test_replies_and_related_icmp_pass_new_flows_the_other_way_do_not(pol):
    allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 80)
    # A is isolated for ingress and allows nothing
    pol.endpoints.upsert(ep(POD_A, 1, ID_A, ENDPOINT_F_POLICY_INGRESS, 2))
    assert pol.run("from_container", syn())[0] == TC_ACT_REDIRECT
    # B answers (B on ifindex 1 now)
    pol.endpoints.upsert(ep(POD_A, 76, ID_A, ENDPOINT_F_POLICY_INGRESS, 2))
    pol.endpoints.upsert(ep(POD_B, 1, ID_B, ENDPOINT_F_POLICY_INGRESS, 5))
    synack = syn(sport=80, dport=40000, src=POD_B, dst=POD_A, flags="SA")
    assert pol.run("from_container", synack)[0] == TC_ACT_REDIRECT
    err = bytes(
        Ether(src=POD_B.mac, dst=POD_B.node_mac)
        / IP(src=POD_B.ip, dst=POD_A.ip)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / IPerror(src=POD_A.ip, dst=POD_B.ip)
        / TCPerror(sport=40000, dport=80)
    )
    assert pol.run("from_container", err)[0] == TC_ACT_REDIRECT
    assert (
        pol.run("from_container", syn(sport=5555, dport=22, src=POD_B, dst=POD_A))[0] == TC_ACT_SHOT
    )


def test_a_revision_change_re_decides_established_flows(pol):
    k = allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 80)
    assert pol.run("from_container", syn())[0] == TC_ACT_REDIRECT
    assert pol.run("from_container", syn(flags="A"))[0] == TC_ACT_REDIRECT
    # the allow goes, the endpoint's revision moves: the next packet is dropped
    pol.policy.remove(k)
    pol.endpoints.upsert(ep(POD_B, 77, ID_B, ENDPOINT_F_POLICY_INGRESS, 6))
    assert pol.run("from_container", syn(flags="A"))[0] == TC_ACT_SHOT
    # an unrelated change (revision moves, the allow stays) does not disturb it
    allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 80)
    pol.endpoints.upsert(ep(POD_B, 77, ID_B, ENDPOINT_F_POLICY_INGRESS, 7))
    assert pol.run("from_container", syn(flags="A"))[0] == TC_ACT_REDIRECT
    assert pol.ct.get(CtKey.of(POD_A.ip, POD_B.ip, 40000, 80, 6)).ingress_rev == 7


def test_no_policy_means_no_lookups(pol):
    pol.endpoints.upsert(ep(POD_B, 77, ID_B))
    k = allow(pol, POD_B.endpoint_id, "ingress", ID_A, 6, 80)
    assert pol.run("from_container", syn(dport=81))[0] == TC_ACT_REDIRECT
    assert pol.policy.get(k.to_c()).packets == 0


def test_pods_cannot_speak_the_overlay(pol):
    before = pol.count("POD_TO_OVERLAY")
    vxlan = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst="198.18.0.12")
        / UDP(sport=1234, dport=8472)
        / (b"\x08\x00\x00\x00\x00\x01\x2c\x00" + b"\x00" * 40)
    )
    assert pol.run("from_container", vxlan)[0] == TC_ACT_SHOT
    ipip = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst="198.18.0.12", proto=4)
        / IP(src="10.244.2.5", dst=POD_B.ip)
        / ICMP()
    )
    assert pol.run("from_container", ipip)[0] == TC_ACT_SHOT
    assert pol.count("POD_TO_OVERLAY") == before + 2


def test_tunnelled_packets_must_come_from_the_node_their_source_lives_on(pol):
    node, peer, other = "198.18.0.11", "198.18.0.12", "198.18.0.13"
    pol.tunnel.set(TunnelConfig.of("ipip", 0, 1, node, 1500))
    pol.host_devices.put(Ifindex(1), HostDevice.of(node, masquerade=True))
    for ip, ident in (
        (peer, IDENTITY_REMOTE_NODE),
        (other, IDENTITY_REMOTE_NODE),
        (node, IDENTITY_HOST),
    ):
        pol.ipcache.upsert(IpcacheEntry(f"{ip}/32", ident, "", node=True))
    pol.ipcache.upsert(IpcacheEntry("10.244.2.0/24", 0, peer))
    pol.ipcache.upsert(IpcacheEntry("10.244.2.5/32", 400, peer))
    pol.endpoints.upsert(ep(POD_B, 77, ID_B))

    def ipip(outer_src: str, inner_src: str) -> bytes:
        return bytes(
            Ether()
            / IP(src=outer_src, dst=node, proto=4)
            / IP(src=inner_src, dst=POD_B.ip)
            / TCP(sport=1, dport=80, flags="S")
        )

    before = pol.count("FORGED_TUNNEL", DIR_INGRESS)
    assert pol.run("from_netdev", ipip(peer, "10.244.2.5"))[0] == TC_ACT_REDIRECT
    assert pol.run("from_netdev", ipip(peer, "10.244.2.9"))[0] == TC_ACT_REDIRECT  # its pod CIDR
    assert pol.run("from_netdev", ipip(other, "10.244.2.5"))[0] == TC_ACT_SHOT  # not its pod
    assert pol.run("from_netdev", ipip(peer, "10.244.9.9"))[0] == TC_ACT_SHOT  # nobody's
    assert pol.count("FORGED_TUNNEL", DIR_INGRESS) == before + 2


def test_key_layout_is_what_the_trie_matches_on():
    k = PolicyMapKey(3, "ingress", 300, 6, 1024, 6).to_c()
    assert (k.prefixlen, k.ep_id, k.dir, k.identity, k.proto) == (86, 3, 1, 300, 6)
    assert bytes(k)[-2:] == (1024).to_bytes(2, "big")
    assert PolicyMapKey(3, "egress", 0, 0, 0, 0).to_c().prefixlen == 64
    assert isinstance(k, PolicyKey)
