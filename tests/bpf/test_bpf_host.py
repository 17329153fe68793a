"""bpf_host.c: masquerade, reverse SNAT, ICMP errors and NodePort on crafted packets.

BPF_PROG_TEST_RUN runs with skb->ifindex 1, so ifindex 1 plays the uplink
(host_devices[1] = the node IP) and the pods sit on other interfaces.
"""

from __future__ import annotations

import socket

import pytest
from lxc_harness import (
    POD_A,
    POD_B,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    checksums_valid,
    on_ifindex,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.nonmasq import LpmKey, Present
from porin.models import Backend, Service

NODE_IP = "198.18.0.11"
PEER = "192.0.2.50"
NODE_MAC = "02:fe:00:00:00:01"
GW_MAC = "02:fe:00:00:00:fe"


@pytest.fixture
def host(lxc):
    lxc.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    lxc.nonmasq.put(LpmKey.of("10.244.0.0/16"), Present(1))
    # pods are behind their own veths (not the uplink)
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    lxc.endpoints.upsert(on_ifindex(POD_B, 77))
    return lxc


def egress(l3) -> bytes:
    """A packet the node routes out of the uplink."""
    return bytes(Ether(src=NODE_MAC, dst=GW_MAC) / l3)


def ingress(l3) -> bytes:
    return bytes(Ether(src=GW_MAC, dst=NODE_MAC) / l3)


def test_masquerade_keeps_free_port_and_fixes_checksums(host):
    before = host.count("MASQUERADED")
    ret, out = host.run(
        "to_netdev", egress(IP(src=POD_A.ip, dst=PEER) / TCP(sport=40000, dport=80, flags="S"))
    )
    assert ret == TC_ACT_OK
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport) == (NODE_IP, 40000)
    assert (got[IP].dst, got[TCP].dport) == (PEER, 80)
    assert checksums_valid(got)
    assert host.count("MASQUERADED") == before + 1
    nat = {(t.direction, t.src, t.sport): t for t in host.nat.translations()}
    out_e = nat[("OUT", POD_A.ip, 40000)]
    assert (out_e.dst, out_e.dport, out_e.xlate_addr, out_e.xlate_port) == (
        PEER,
        80,
        NODE_IP,
        40000,
    )
    in_e = nat[("IN", PEER, 80)]
    assert (in_e.dst, in_e.dport, in_e.xlate_addr, in_e.xlate_port) == (
        NODE_IP,
        40000,
        POD_A.ip,
        40000,
    )


def test_reply_is_translated_back_and_delivered_to_pod(host):
    host.run(
        "to_netdev", egress(IP(src=POD_A.ip, dst=PEER) / TCP(sport=40001, dport=80, flags="S"))
    )
    before = host.count("REV_SNAT", direction=1)
    ret, out = host.run(
        "from_netdev", ingress(IP(src=PEER, dst=NODE_IP) / TCP(sport=80, dport=40001, flags="SA"))
    )
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].dst, got[TCP].dport) == (POD_A.ip, 40001)
    assert (got.dst, got.src) == (POD_A.mac, POD_A.node_mac)
    assert got[IP].ttl == 63
    assert checksums_valid(got)
    assert host.count("REV_SNAT", direction=1) == before + 1


def test_same_source_port_from_two_pods_gets_two_translations(host):
    syn = lambda ip: egress(IP(src=ip, dst=PEER) / TCP(sport=41000, dport=443, flags="S"))  # noqa: E731
    a = Ether(host.run("to_netdev", syn(POD_A.ip))[1])
    b = Ether(host.run("to_netdev", syn(POD_B.ip))[1])
    assert a[IP].src == b[IP].src == NODE_IP
    assert a[TCP].sport == 41000
    assert b[TCP].sport != 41000 and 32768 <= b[TCP].sport <= 60999
    assert checksums_valid(b)
    # each reply reaches its own pod
    for sport, pod in ((a[TCP].sport, POD_A), (b[TCP].sport, POD_B)):
        ret, out = host.run(
            "from_netdev",
            ingress(IP(src=PEER, dst=NODE_IP) / TCP(sport=443, dport=sport, flags="SA")),
        )
        got = Ether(out)
        assert ret == TC_ACT_REDIRECT and (got[IP].dst, got[TCP].dport) == (pod.ip, 41000)
        assert checksums_valid(got)


def test_udp_and_icmp_echo_are_masqueraded(host):
    got = Ether(
        host.run(
            "to_netdev", egress(IP(src=POD_A.ip, dst=PEER) / UDP(sport=5353, dport=53) / Raw(b"q"))
        )[1]
    )
    assert got[IP].src == NODE_IP and checksums_valid(got)
    got = Ether(host.run("to_netdev", egress(IP(src=POD_A.ip, dst=PEER) / ICMP(id=4321, seq=7)))[1])
    assert got[IP].src == NODE_IP and got[ICMP].id == 4321 and checksums_valid(got)
    # a second pod with the same echo id gets another one
    got_b = Ether(
        host.run("to_netdev", egress(IP(src=POD_B.ip, dst=PEER) / ICMP(id=4321, seq=1)))[1]
    )
    assert got_b[ICMP].id != 4321 and checksums_valid(got_b)
    ret, out = host.run(
        "from_netdev", ingress(IP(src=PEER, dst=NODE_IP) / ICMP(type=0, id=got_b[ICMP].id, seq=1))
    )
    back = Ether(out)
    assert ret == TC_ACT_REDIRECT and back[IP].dst == POD_B.ip and back[ICMP].id == 4321
    assert checksums_valid(back)


def test_non_masquerade_destinations_and_foreign_sources_untouched(host):
    inside = egress(IP(src=POD_A.ip, dst="10.244.3.7") / TCP(sport=1, dport=2))
    assert host.run("to_netdev", inside) == (TC_ACT_OK, inside)
    node_own = egress(IP(src=NODE_IP, dst=PEER) / TCP(sport=1, dport=2))
    assert host.run("to_netdev", node_own) == (TC_ACT_OK, node_own)
    not_ours = ingress(IP(src=PEER, dst="198.18.0.99") / TCP(sport=80, dport=40001))
    assert host.run("from_netdev", not_ours) == (TC_ACT_OK, not_ours)
    assert host.nat.translations() == []


def test_icmp_frag_needed_for_masqueraded_flow_reaches_pod(host):
    # pod B's flow got a NAT port other than its own, so the quoted port must change too
    host.run(
        "to_netdev", egress(IP(src=POD_A.ip, dst=PEER) / TCP(sport=42000, dport=80, flags="S"))
    )
    out = Ether(
        host.run(
            "to_netdev", egress(IP(src=POD_B.ip, dst=PEER) / TCP(sport=42000, dport=80, flags="S"))
        )[1]
    )
    nat_port = out[TCP].sport
    assert nat_port != 42000
    quoted = IP(bytes(out[IP]))
    err = ingress(
        IP(src=PEER, dst=NODE_IP)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / IPerror(bytes(quoted)[:28])
    )
    ret, res = host.run("from_netdev", err)
    assert ret == TC_ACT_REDIRECT
    got = Ether(res)
    assert got[IP].dst == POD_B.ip and (got[ICMP].type, got[ICMP].code) == (3, 4)
    inner = got[IPerror]
    assert (inner.src, inner.dst) == (POD_B.ip, PEER)
    assert inner[TCPerror].sport == 42000 and inner[TCPerror].dport == 80
    assert checksums_valid(got)  # outer IP and the ICMP checksum over the quote
    fresh = IP(bytes(inner)[:20])
    wire = fresh.chksum
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == wire  # the quoted header's own checksum


def test_icmp_error_for_unknown_flow_passes_to_node(host):
    err = ingress(
        IP(src=PEER, dst=NODE_IP)
        / ICMP(type=3, code=3)
        / IPerror(src=NODE_IP, dst=PEER, proto=6)
        / TCPerror(sport=50000, dport=80)
    )
    assert host.run("from_netdev", err) == (TC_ACT_OK, err)


def test_nodeport_dnat_and_reply(host, services):
    services.node.node_ips = [NODE_IP]
    services.upsert(
        Service(
            id=1,
            ip="10.96.0.10",
            port=80,
            type="nodeport",
            node_port=30080,
            backends=[Backend(POD_B.ip, 8080)],
        )
    )
    client = "203.0.113.7"
    before = host.count("NODEPORT", direction=1)
    ret, out = host.run(
        "from_netdev",
        ingress(IP(src=client, dst=NODE_IP) / TCP(sport=50001, dport=30080, flags="S")),
    )
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst, got[TCP].dport) == (client, POD_B.ip, 8080)
    assert got.dst == POD_B.mac and checksums_valid(got)
    assert host.count("NODEPORT", direction=1) == before + 1
    # the backend's reply leaves its veth translated back to the node port
    host.endpoints.upsert(on_ifindex(POD_B, 1))
    reply = bytes(
        Ether(src=POD_B.mac, dst=POD_B.node_mac)
        / IP(src=POD_B.ip, dst=client)
        / TCP(sport=8080, dport=50001, flags="SA")
    )
    ret, out = host.run("from_container", reply)
    assert ret == TC_ACT_OK
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport, got[IP].dst) == (NODE_IP, 30080, client)
    assert checksums_valid(got)


def test_nodeport_without_backends_is_refused(host, services):
    services.node.node_ips = [NODE_IP]
    services.upsert(Service(id=2, ip="10.96.0.11", port=80, type="nodeport", node_port=30081))
    ret, out = host.run(
        "from_netdev",
        ingress(IP(src="203.0.113.7", dst=NODE_IP) / TCP(sport=50002, dport=30081, flags="S")),
    )
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst) == (NODE_IP, "203.0.113.7")
    assert (got[ICMP].type, got[ICMP].code) == (3, 3) and checksums_valid(got)


def test_full_nat_table_is_a_counted_drop(tmp_path):
    """A table of 16 entries: the ninth flow (two entries each) is dropped with its reason."""
    import shutil
    import uuid

    from porin.daemon.config import AgentConfig
    from porin.daemon.datapath import compile_programs
    from porin.maps import syscall
    from porin.maps.endpoints import EndpointsMap
    from porin.maps.host_devices import HostDevicesMap
    from porin.maps.metrics import MetricsMap, reason_by_name

    root = f"/sys/fs/bpf/pltest-{uuid.uuid4().hex[:8]}"
    try:
        _, progs = compile_programs(
            "bpf_host.c", AgentConfig(bpffs_root=root, nat_map_size=16), ["to_netdev"]
        )
        with HostDevicesMap(root) as hd, EndpointsMap(root) as eps, MetricsMap(root) as met:
            hd.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
            eps.upsert(on_ifindex(POD_A, 76))
            rets = []
            for sport in range(45000, 45010):
                pkt = egress(IP(src=POD_A.ip, dst=PEER) / TCP(sport=sport, dport=80, flags="S"))
                rets.append(syscall.prog_test_run(progs["to_netdev"].fd, pkt)[0])
            assert rets[:8] == [TC_ACT_OK] * 8
            assert rets[8:] == [TC_ACT_SHOT] * 2
            assert met.count(reason_by_name("NAT_MAP_FULL").code, 2).packets == 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_nat_gc_removes_orphans_once_and_keeps_live_flows(host):
    """Through the real datapath: two masqueraded flows; one's conntrack entry
    expires. GC removes exactly that flow's two NAT entries and an IN entry
    left without its OUT entry, and nothing of the live flow."""
    from porin.daemon.ctgc import CtGarbageCollector

    def flow(sport: int) -> None:
        # from_container creates the pod's conntrack entry, to_netdev its NAT entries
        host.endpoints.upsert(on_ifindex(POD_A, 1))
        host.run(
            "from_container",
            bytes(
                Ether(src=POD_A.mac, dst=POD_A.node_mac)
                / IP(src=POD_A.ip, dst=PEER)
                / TCP(sport=sport, dport=80, flags="S")
            ),
        )
        host.endpoints.upsert(on_ifindex(POD_A, 76))
        host.run(
            "to_netdev", egress(IP(src=POD_A.ip, dst=PEER) / TCP(sport=sport, dport=80, flags="S"))
        )

    flow(47000)
    flow(47001)
    assert len(host.nat.translations()) == 4
    for key in list(host.ct.keys()):
        entry = host.ct.get(key)
        if key.sport == socket.htons(47000):
            entry.lifetime = 1  # long expired
            host.ct.put(key, entry)
    # and an IN entry whose OUT entry vanished
    from porin.maps.lb_common import ip_to_be, port_to_be
    from porin.maps.nat import NAT_DIR_IN, NatEntry, NatKey

    host.nat.put(
        NatKey(
            saddr=ip_to_be(PEER),
            daddr=ip_to_be(NODE_IP),
            sport=port_to_be(80),
            dport=port_to_be(50000),
            proto=6,
            dir=NAT_DIR_IN,
        ),
        NatEntry(to_addr=ip_to_be(POD_A.ip), to_port=port_to_be(50000)),
    )
    gc = CtGarbageCollector(host.ct, nat=host.nat)
    assert gc.run_once() == 1
    left = {(t.direction, t.sport, t.dport) for t in host.nat.translations()}
    assert left == {("OUT", 47001, 80), ("IN", 80, 47001)}
    assert gc.nat_deleted_total == 3
    assert gc.run_once() == 0 and gc.nat_deleted_total == 3
