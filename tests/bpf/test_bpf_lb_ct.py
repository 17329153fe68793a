"""Service load balancing and conntrack in bpf_lxc.c on crafted packets.

Checksums are verified independently: scapy recomputes them from scratch
and must agree with what the datapath wrote incrementally.
"""

from __future__ import annotations

import collections

import pytest
from lxc_harness import POD_A, POD_B, TC_ACT_OK, TC_ACT_REDIRECT, checksums_valid, on_ifindex
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from porin.maps.conntrack import decode, monotonic_seconds
from porin.maps.endpoints import EndpointEntry
from porin.models import Backend, Service

VIP = "10.96.0.10"
HAIRPIN = "169.254.42.1"
POD_C = EndpointEntry(
    ip="10.244.0.12",
    ifindex=78,
    endpoint_id=12,
    mac="02:00:00:00:00:0c",
    node_mac="02:aa:00:00:00:0c",
)


def sending(lxc, ep: EndpointEntry) -> None:
    """Make `ep` the endpoint on the test interface (BPF_PROG_TEST_RUN uses ifindex 1)."""
    for other, idx in ((POD_A, 76), (POD_B, 77), (POD_C, 78)):
        lxc.endpoints.upsert(on_ifindex(other, 1 if other.ip == ep.ip else idx))


def frame(ep: EndpointEntry, pkt) -> bytes:
    return bytes(Ether(src=ep.mac, dst=ep.node_mac) / pkt)


def svc(services, backends, **kw) -> Service:
    s = Service(
        id=kw.pop("id", 1),
        ip=kw.pop("ip", VIP),
        port=kw.pop("port", 80),
        protocol=kw.pop("protocol", "tcp"),
        backends=[Backend(ip=ip, port=port) for ip, port in backends],
        **kw,
    )
    return services.upsert(s)


def ct_entry_of(key, entry):
    return decode(key, entry, monotonic_seconds())


def ct_entry(lxc, src, sport, dst, dport, service=False):
    for c in lxc.ct.connections():
        if (c.src, c.sport, c.dst, c.dport, c.service) == (src, sport, dst, dport, service):
            return c
    return None


@pytest.fixture
def pods(lxc):
    sending(lxc, POD_A)
    return lxc


def test_dnat_rewrites_address_port_and_checksums(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    syn = IP(src=POD_A.ip, dst=VIP, ttl=64) / TCP(sport=40000, dport=80, flags="S", seq=1000)
    ret, out = pods.run("from_container", frame(POD_A, syn))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst) == (POD_A.ip, POD_B.ip)
    assert (got[TCP].sport, got[TCP].dport) == (40000, 8080)
    assert got.dst == POD_B.mac
    assert checksums_valid(got)
    assert got[TCP].seq == 1000


def test_udp_dnat_with_and_without_checksum(pods, services):
    svc(services, [(POD_B.ip, 5353)], port=53, protocol="udp")
    dgram = IP(src=POD_A.ip, dst=VIP) / UDP(sport=33333, dport=53) / Raw(b"query")
    ret, out = pods.run("from_container", frame(POD_A, dgram))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].dst, got[UDP].dport) == (POD_B.ip, 5353)
    assert got[UDP].chksum != 0 and checksums_valid(got)
    # a UDP checksum of zero means "none" and must stay zero
    raw = bytearray(
        frame(POD_A, IP(src=POD_A.ip, dst=VIP) / UDP(sport=33334, dport=53) / Raw(b"q"))
    )
    raw[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"
    ret, out = pods.run("from_container", bytes(raw))
    got = Ether(out)
    assert got[UDP].chksum == 0 and got[IP].dst == POD_B.ip and checksums_valid(got)


def test_reply_is_reverse_translated(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40001, dport=80, flags="S", seq=1)
    assert pods.run("from_container", frame(POD_A, syn))[0] == TC_ACT_REDIRECT
    sending(pods, POD_B)
    synack = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=40001, flags="SA", seq=9, ack=2)
    ret, out = pods.run("from_container", frame(POD_B, synack))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport) == (VIP, 80)
    assert (got[IP].dst, got[TCP].dport) == (POD_A.ip, 40001)
    assert got.dst == POD_A.mac
    assert checksums_valid(got)


def test_reply_through_host_stack_is_reverse_translated_in_to_container(pods, services):
    """Backend outside the node: the reply reaches the pod via the stack (to_container)."""
    svc(services, [("192.0.2.80", 80)])
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40002, dport=80, flags="S")
    ret, out = pods.run("from_container", frame(POD_A, syn))
    assert ret == TC_ACT_OK and Ether(out)[IP].dst == "192.0.2.80"
    synack = IP(src="192.0.2.80", dst=POD_A.ip) / TCP(sport=80, dport=40002, flags="SA")
    ret, out = pods.run("to_container", bytes(Ether(src=POD_A.node_mac, dst=POD_A.mac) / synack))
    assert ret == TC_ACT_OK
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport) == (VIP, 80)
    assert checksums_valid(got)


def test_established_flow_keeps_backend_when_backends_change(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    first = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40010, dport=80, flags="S")
    assert Ether(pods.run("from_container", frame(POD_A, first))[1])[IP].dst == POD_B.ip
    svc(services, [(POD_B.ip, 8080), (POD_C.ip, 8080)])  # backend added
    seen = collections.Counter()
    for _ in range(30):
        ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40010, dport=80, flags="A")
        seen[Ether(pods.run("from_container", frame(POD_A, ack))[1])[IP].dst] += 1
    assert seen == {POD_B.ip: 30}
    # new flows spread over both
    for sport in range(41000, 41040):
        syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
        seen[Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst] += 1
    assert seen[POD_C.ip] > 0


def test_terminating_backend_keeps_flows_but_gets_no_new_ones(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40020, dport=80, flags="S")
    pods.run("from_container", frame(POD_A, syn))
    s = Service(
        id=1,
        ip=VIP,
        port=80,
        backends=[Backend(POD_B.ip, 8080, state="terminating"), Backend(POD_C.ip, 8080)],
    )
    services.upsert(s)
    ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40020, dport=80, flags="A")
    assert Ether(pods.run("from_container", frame(POD_A, ack))[1])[IP].dst == POD_B.ip
    for sport in range(42000, 42020):
        syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
        assert Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst == POD_C.ip


def test_removed_backend_flow_is_rebalanced(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40030, dport=80, flags="S")
    pods.run("from_container", frame(POD_A, syn))
    svc(services, [(POD_C.ip, 8080)])  # B removed
    ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40030, dport=80, flags="A")
    assert Ether(pods.run("from_container", frame(POD_A, ack))[1])[IP].dst == POD_C.ip
    assert (
        ct_entry(pods, POD_A.ip, 40030, VIP, 80, service=True).backend_id
        == services.backend_ids(1)[f"{POD_C.ip}:8080"]
    )


def handshake(pods, sport: int, backend=POD_B) -> None:
    sending(pods, POD_A)
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
    assert Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst == backend.ip
    sending(pods, backend)
    synack = IP(src=backend.ip, dst=POD_A.ip) / TCP(sport=8080, dport=sport, flags="SA")
    assert Ether(pods.run("from_container", frame(backend, synack))[1])[IP].src == VIP
    sending(pods, POD_A)


def raw_entry(pods, src, sport, dst, dport):
    for k, e in pods.ct.raw_entries():
        c = ct_entry_of(k, e)
        if (c.src, c.sport, c.dst, c.dport) == (src, sport, dst, dport):
            return k, e
    raise AssertionError(f"no entry {src}:{sport} -> {dst}:{dport}")


def test_established_client_packets_touch_only_the_flow_entry(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    handshake(pods, 40060)
    for _ in range(5):
        ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40060, dport=80, flags="A")
        got = Ether(pods.run("from_container", frame(POD_A, ack))[1])
        assert (got[IP].dst, got[TCP].dport) == (POD_B.ip, 8080) and checksums_valid(got)
    flow = ct_entry(pods, POD_A.ip, 40060, VIP, 80, service=True)
    reply = ct_entry(pods, POD_A.ip, 40060, POD_B.ip, 8080)
    assert (flow.tx_packets, flow.rx_packets, flow.state) == (6, 1, "ESTABLISHED")
    assert flow.backend_id == services.backend_ids(1)[f"{POD_B.ip}:8080"]
    assert (reply.tx_packets, reply.rx_packets, reply.rev_nat) == (1, 1, flow.rev_nat)
    assert not reply.service
    # the handshake's last ACK made the flow long-lived: its reply entry too,
    # and it outlives the flow entry (by CT_PEER_REFRESH, one second less when
    # the later ACKs renewed the flow entry in the next second)
    assert reply.state == "ESTABLISHED"
    assert flow.expires_in + 4 <= reply.expires_in <= flow.expires_in + 5


def test_reply_entry_follows_its_flow_entry(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    handshake(pods, 40070)
    pods.run(
        "from_container",
        frame(POD_A, IP(src=POD_A.ip, dst=VIP) / TCP(sport=40070, dport=80, flags="A")),
    )
    # a reply hands the flow entry's state and lifetime to the reply entry
    sending(pods, POD_B)
    pods.run(
        "from_container",
        frame(POD_B, IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=40070, flags="A")),
    )
    flow = ct_entry(pods, POD_A.ip, 40070, VIP, 80, service=True)
    reply = ct_entry(pods, POD_A.ip, 40070, POD_B.ip, 8080)
    assert reply.state == flow.state == "ESTABLISHED"
    assert reply.expires_in == flow.expires_in + 5
    # the client's packets renew it every few seconds, even with no replies
    rk, re = raw_entry(pods, POD_A.ip, 40070, POD_B.ip, 8080)
    re.lifetime = monotonic_seconds() + 1
    pods.ct.put(rk, re)
    fk, fe = raw_entry(pods, POD_A.ip, 40070, VIP, 80)
    fe.peer_seen = 0
    pods.ct.put(fk, fe)
    sending(pods, POD_A)
    pods.run(
        "from_container",
        frame(POD_A, IP(src=POD_A.ip, dst=VIP) / TCP(sport=40070, dport=80, flags="A")),
    )
    flow = ct_entry(pods, POD_A.ip, 40070, VIP, 80, service=True)
    reply = ct_entry(pods, POD_A.ip, 40070, POD_B.ip, 8080)
    assert reply.expires_in == flow.expires_in + 5 and flow.expires_in > 21000


def test_service_entries_of_an_older_build_keep_their_backend(pods, services):
    svc(services, [(POD_B.ip, 8080), (POD_C.ip, 8080)])
    ids = services.backend_ids(1)
    # what an older build left: the client -> frontend entry under key flag 1,
    # naming POD_C, and no flow entry under flag 0
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40090, dport=80, flags="S")
    pods.run("from_container", frame(POD_A, syn))
    fk, fe = raw_entry(pods, POD_A.ip, 40090, VIP, 80)
    pods.ct.delete(fk)
    fk.flags = 1
    fe.backend_id = ids[f"{POD_C.ip}:8080"]
    pods.ct.put(fk, fe)
    assert pods.ct.adopt_legacy_service_entries(drop_legacy=False) == 1
    assert any(k.flags == 1 for k, _ in pods.ct.raw_entries())  # old programs still use it
    for _ in range(3):
        ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40090, dport=80, flags="A")
        assert Ether(pods.run("from_container", frame(POD_A, ack))[1])[IP].dst == POD_C.ip
    assert pods.ct.adopt_legacy_service_entries(drop_legacy=True) == 0  # already copied
    assert not any(k.flags for k, _ in pods.ct.raw_entries())


def test_a_lost_reply_entry_is_made_again(pods, services):
    """A full table may evict a reply entry while its flow entry lives on: the
    client's next packets (within CT_PEER_REFRESH seconds) make it again."""
    svc(services, [(POD_B.ip, 8080)])
    handshake(pods, 40095)
    rk, _ = raw_entry(pods, POD_A.ip, 40095, POD_B.ip, 8080)
    pods.ct.delete(rk)
    fk, fe = raw_entry(pods, POD_A.ip, 40095, VIP, 80)
    fe.peer_seen = 0
    pods.ct.put(fk, fe)
    ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40095, dport=80, flags="A")
    pods.run("from_container", frame(POD_A, ack))
    reply = ct_entry(pods, POD_A.ip, 40095, POD_B.ip, 8080)
    flow = ct_entry(pods, POD_A.ip, 40095, VIP, 80, service=True)
    assert reply.rev_nat == flow.rev_nat and reply.expires_in == flow.expires_in + 5
    sending(pods, POD_B)
    data = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=40095, flags="A")
    got = Ether(pods.run("from_container", frame(POD_B, data))[1])
    assert (got[IP].src, got[TCP].sport) == (VIP, 80) and checksums_valid(got)


def test_a_new_flow_whose_reply_entry_outlived_its_flow_entry_gets_a_flow_entry(pods, services):
    """A reply entry outlives its flow entry (by CT_PEER_REFRESH): a new
    connection from the same port must still record its backend, or its
    next packets would be balanced afresh, maybe to another backend."""
    svc(services, [(POD_B.ip, 8080), (POD_C.ip, 8080)])
    sending(pods, POD_A)
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40097, dport=80, flags="S")
    first = Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst
    fk, _ = raw_entry(pods, POD_A.ip, 40097, VIP, 80)
    pods.ct.delete(fk)  # the flow entry expired; the reply entry is still there
    assert ct_entry(pods, POD_A.ip, 40097, first, 8080) is not None
    again = Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst
    flow = ct_entry(pods, POD_A.ip, 40097, VIP, 80, service=True)
    assert flow is not None and flow.backend_id == services.backend_ids(1)[f"{again}:8080"]
    for _ in range(20):  # every later packet goes where the SYN went
        ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40097, dport=80, flags="A")
        assert Ether(pods.run("from_container", frame(POD_A, ack))[1])[IP].dst == again


def test_flow_of_a_deleted_service_is_no_longer_translated(pods, services):
    svc(services, [(POD_B.ip, 8080)])
    handshake(pods, 40080)
    services.delete(1)
    ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40080, dport=80, flags="A")
    ret, out = pods.run("from_container", frame(POD_A, ack))
    assert ret == TC_ACT_OK and Ether(out)[IP].dst == VIP
    c = ct_entry(pods, POD_A.ip, 40080, VIP, 80)
    assert c.backend_id == 0 and c.rev_nat == 0 and not c.service


def test_dangling_backend_id_never_reaches_the_slots_next_holder(pods, services):
    """lb4_backends is an array of id-tagged slots: when a removed backend's
    slot goes to another service's new backend, a flow that still names the
    old id is re-balanced within its own service."""
    svc(services, [(POD_B.ip, 8080)])
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40035, dport=80, flags="S")
    pods.run("from_container", frame(POD_A, syn))
    old_id = services.backend_ids(1)[f"{POD_B.ip}:8080"]
    svc(services, [(POD_C.ip, 8080)])  # B removed: its slot is free again
    size = pods.lb.backends.max_entries
    services._next_backend_id = old_id + size  # the next id lands in B's old slot
    svc(services, [(POD_B.ip, 9090)], id=2, ip="10.96.0.20")
    new_id = services.backend_ids(2)[f"{POD_B.ip}:9090"]
    assert new_id == old_id + size
    assert pods.lb.backends.slot_of(new_id) == pods.lb.backends.slot_of(old_id)
    ack = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40035, dport=80, flags="A")
    got = Ether(pods.run("from_container", frame(POD_A, ack))[1])
    assert (got[IP].dst, got[TCP].dport) == (POD_C.ip, 8080)


def test_backend_ids_take_free_slots_only(pods, services):
    svc(services, [(POD_B.ip, 8080), (POD_C.ip, 8080)])
    taken = services.backend_ids(1)
    services._next_backend_id = min(taken.values()) + pods.lb.backends.max_entries
    svc(services, [(POD_B.ip, 7070), (POD_C.ip, 7070)], id=2, ip="10.96.0.20")
    slots = [
        pods.lb.backends.slot_of(b) for sid in (1, 2) for b in services.backend_ids(sid).values()
    ]
    assert len(set(slots)) == 4
    assert set(pods.lb.backends.backends()) == {
        b for sid in (1, 2) for b in services.backend_ids(sid).values()
    }
    services.delete(1)
    assert set(pods.lb.backends.backends()) == set(services.backend_ids(2).values())


def test_no_backend_answers_icmp_port_unreachable(pods, services):
    svc(services, [])
    before = pods.count("NO_SERVICE_BACKEND")
    syn = IP(src=POD_A.ip, dst=VIP, id=4242) / TCP(sport=40040, dport=80, flags="S", seq=77)
    ret, out = pods.run("from_container", frame(POD_A, syn))
    assert ret == TC_ACT_REDIRECT  # back out of the pod's own veth
    got = Ether(out)
    assert got.dst == POD_A.mac and got.src == POD_A.node_mac
    assert (got[IP].src, got[IP].dst) == (VIP, POD_A.ip)
    assert (got[ICMP].type, got[ICMP].code) == (3, 3)
    quoted = got[IPerror]
    assert (quoted.src, quoted.dst, quoted.id) == (POD_A.ip, VIP, 4242)
    assert bytes(got[IPerror])[20:24] == (40040).to_bytes(2, "big") + (80).to_bytes(2, "big")
    assert checksums_valid(got)
    assert pods.count("NO_SERVICE_BACKEND") == before + 1


def test_hairpin_is_sourced_from_the_hairpin_address(pods, services):
    svc(services, [(POD_A.ip, 8080)])
    syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=40050, dport=80, flags="S")
    ret, out = pods.run("from_container", frame(POD_A, syn))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst, got[TCP].dport) == (HAIRPIN, POD_A.ip, 8080)
    assert checksums_valid(got)
    synack = IP(src=POD_A.ip, dst=HAIRPIN) / TCP(sport=8080, dport=40050, flags="SA")
    ret, out = pods.run("from_container", frame(POD_A, synack))
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport, got[IP].dst) == (VIP, 80, POD_A.ip)
    assert checksums_valid(got)


def test_session_affinity_keeps_client_on_one_backend(pods, services):
    svc(services, [(POD_B.ip, 8080), (POD_C.ip, 8080)], affinity_timeout=300)
    seen = set()
    for sport in range(43000, 43040):
        syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
        seen.add(Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst)
    assert len(seen) == 1


def test_maglev_picks_by_tuple_hash(pods, services):
    svc(services, [(POD_B.ip, 8080), (POD_C.ip, 8080)], algorithm="maglev")
    picks = {}
    for sport in range(44000, 44060):
        syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
        picks[sport] = Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst
    assert set(picks.values()) == {POD_B.ip, POD_C.ip}
    pods.ct.flush()  # without conntrack, the same tuples land on the same backends
    for sport, dst in picks.items():
        syn = IP(src=POD_A.ip, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
        assert Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst == dst


def test_tcp_state_machine_and_lifetimes(pods):
    def step(sender, pkt):
        sending(pods, sender)
        pods.run("from_container", frame(sender, pkt))
        return ct_entry(pods, POD_A.ip, 45000, POD_B.ip, 80)

    a2b = IP(src=POD_A.ip, dst=POD_B.ip)
    b2a = IP(src=POD_B.ip, dst=POD_A.ip)
    now = monotonic_seconds()
    e = step(POD_A, a2b / TCP(sport=45000, dport=80, flags="S"))
    assert e.state == "SYN_SENT" and 58 <= e.expires_in <= 61 and e.direction == "OUT"
    e = step(POD_B, b2a / TCP(sport=80, dport=45000, flags="SA"))
    assert e.state == "SYN_RECV" and e.rx_packets == 1
    e = step(POD_A, a2b / TCP(sport=45000, dport=80, flags="A"))
    assert e.state == "ESTABLISHED" and 21598 <= e.expires_in <= 21601
    e = step(POD_A, a2b / TCP(sport=45000, dport=80, flags="FA"))
    assert e.state == "FIN_WAIT" and e.expires_in > 60
    e = step(POD_B, b2a / TCP(sport=80, dport=45000, flags="FA"))
    assert e.state == "CLOSING" and 8 <= e.expires_in <= 11
    assert (e.tx_packets, e.rx_packets) == (3, 2)
    assert "SYN" in e.tx_flags and "FIN" in e.rx_flags
    assert monotonic_seconds() - now < 5


def test_rst_closes(pods):
    sending(pods, POD_A)
    pods.run(
        "from_container", frame(POD_A, IP(src=POD_A.ip, dst=POD_B.ip) / TCP(sport=45100, flags="S"))
    )
    sending(pods, POD_B)
    pods.run(
        "from_container",
        frame(POD_B, IP(src=POD_B.ip, dst=POD_A.ip) / TCP(dport=45100, sport=80, flags="R")),
    )
    e = ct_entry(pods, POD_A.ip, 45100, POD_B.ip, 80)
    assert e.state == "CLOSED" and e.expires_in <= 10


def test_udp_and_icmp_echo_tracked(pods):
    pods.run(
        "from_container",
        frame(POD_A, IP(src=POD_A.ip, dst="192.0.2.9") / UDP(sport=5000, dport=53)),
    )
    e = ct_entry(pods, POD_A.ip, 5000, "192.0.2.9", 53)
    assert e.proto == "UDP" and e.state == "NEW" and 58 <= e.expires_in <= 61
    reply = (
        Ether(src=POD_A.node_mac, dst=POD_A.mac)
        / IP(src="192.0.2.9", dst=POD_A.ip)
        / UDP(sport=53, dport=5000)
    )
    pods.run("to_container", bytes(reply))
    e = ct_entry(pods, POD_A.ip, 5000, "192.0.2.9", 53)
    assert e.state == "REPLIED" and e.rx_packets == 1
    pods.run(
        "from_container", frame(POD_A, IP(src=POD_A.ip, dst="192.0.2.9") / ICMP(id=777, seq=1))
    )
    echo_reply = (
        Ether(src=POD_A.node_mac, dst=POD_A.mac)
        / IP(src="192.0.2.9", dst=POD_A.ip)
        / ICMP(type=0, id=777, seq=1)
    )
    pods.run("to_container", bytes(echo_reply))
    e = ct_entry(pods, POD_A.ip, 777, "192.0.2.9", 0)
    assert e.proto == "ICMP" and (e.tx_packets, e.rx_packets) == (1, 1)


def test_connection_towards_pod_is_tracked_as_in(pods):
    syn = (
        Ether(src=POD_A.node_mac, dst=POD_A.mac)
        / IP(src="10.244.0.1", dst=POD_A.ip)
        / TCP(sport=50000, dport=22, flags="S")
    )
    assert pods.run("to_container", bytes(syn))[0] == TC_ACT_OK
    e = ct_entry(pods, "10.244.0.1", 50000, POD_A.ip, 22)
    assert e.direction == "IN" and e.state == "SYN_SENT"


def test_icmp_error_is_matched_to_its_flow_as_related(pods):
    pods.run(
        "from_container",
        frame(POD_A, IP(src=POD_A.ip, dst="192.0.2.9") / UDP(sport=5001, dport=53)),
    )
    err = (
        Ether(src=POD_A.node_mac, dst=POD_A.mac)
        / IP(src="192.0.2.9", dst=POD_A.ip)
        / ICMP(type=3, code=3)
        / IPerror(src=POD_A.ip, dst="192.0.2.9", proto=17)
        / UDPerror(sport=5001, dport=53)
    )
    assert pods.run("to_container", bytes(err))[0] == TC_ACT_OK
    assert ct_entry(pods, POD_A.ip, 5001, "192.0.2.9", 53).related
    # an error about no tracked flow creates nothing
    stray = (
        Ether(src=POD_A.node_mac, dst=POD_A.mac)
        / IP(src="192.0.2.9", dst=POD_A.ip)
        / ICMP(type=3, code=3)
        / IPerror(src=POD_A.ip, dst="192.0.2.9", proto=17)
        / UDPerror(sport=6000, dport=53)
    )
    n = len(pods.ct.connections())
    pods.run("to_container", bytes(stray))
    assert len(pods.ct.connections()) == n


def udp_service_flow(pods, services, sport: int) -> None:
    svc(services, [(POD_B.ip, 5353)], port=53, protocol="udp")
    dns = IP(src=POD_A.ip, dst=VIP) / UDP(sport=sport, dport=53) / Raw(b"q")
    got = Ether(pods.run("from_container", frame(POD_A, dns))[1])
    assert (got[IP].dst, got[UDP].dport) == (POD_B.ip, 5353)


def quoted_error(src: str, sport: int, ttl: int = 63) -> IP:
    """What the backend's side sends back about the client's (translated) packet."""
    return (
        IP(src=src, dst=POD_A.ip)
        / ICMP(type=3, code=3)
        / IPerror(src=POD_A.ip, dst=POD_B.ip, ttl=ttl, proto=17)
        / UDPerror(sport=sport, dport=5353)
        / Raw(b"q")
    )


def test_icmp_error_from_the_backend_is_about_the_frontend(pods, services):
    """A UDP client of a service with a closed backend port gets port unreachable
    from the frontend, about its packet to the frontend (so its socket sees
    ECONNREFUSED), as kube-proxy's NAT gives it."""
    udp_service_flow(pods, services, 5100)
    sending(pods, POD_B)
    ret, out = pods.run("from_container", frame(POD_B, quoted_error(POD_B.ip, 5100)))
    assert ret == TC_ACT_REDIRECT
    got = Ether(out)
    assert (got[IP].src, got[IP].dst) == (VIP, POD_A.ip)
    q = got[IPerror]
    assert (q.src, q.dst, got[UDPerror].sport, got[UDPerror].dport) == (POD_A.ip, VIP, 5100, 53)
    # the ICMP checksum and the quoted header's own checksum, independently
    assert checksums_valid(got)
    fresh = IPerror(bytes(q))
    del fresh.chksum
    assert IPerror(bytes(fresh)).chksum == q.chksum
    assert ct_entry(pods, POD_A.ip, 5100, POD_B.ip, 5353).related


def test_icmp_error_from_a_router_keeps_its_source(pods, services):
    udp_service_flow(pods, services, 5101)
    router_err = Ether(src=POD_A.node_mac, dst=POD_A.mac) / quoted_error("192.0.2.1", 5101)
    ret, out = pods.run("to_container", bytes(router_err))
    assert ret == TC_ACT_OK
    got = Ether(out)
    assert got[IP].src == "192.0.2.1" and got[IPerror].dst == VIP and got[UDPerror].dport == 53
    assert checksums_valid(got)


def test_reused_source_port_through_another_service_replies_from_that_service(pods, services):
    svc(services, [(POD_B.ip, 8080)], id=1)
    svc(services, [(POD_B.ip, 8080)], id=2, ip="10.96.0.20")
    for vip in (VIP, "10.96.0.20", VIP):
        sending(pods, POD_A)
        syn = IP(src=POD_A.ip, dst=vip) / TCP(sport=46000, dport=80, flags="S")
        assert Ether(pods.run("from_container", frame(POD_A, syn))[1])[IP].dst == POD_B.ip
        sending(pods, POD_B)
        synack = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=46000, flags="SA")
        assert Ether(pods.run("from_container", frame(POD_B, synack))[1])[IP].src == vip
    # and straight to the backend from the same port: no translation at all
    sending(pods, POD_A)
    pods.run(
        "from_container",
        frame(POD_A, IP(src=POD_A.ip, dst=POD_B.ip) / TCP(sport=46000, dport=8080, flags="S")),
    )
    sending(pods, POD_B)
    synack = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=46000, flags="SA")
    assert Ether(pods.run("from_container", frame(POD_B, synack))[1])[IP].src == POD_B.ip
