"""The flow events the datapath writes (bpf/lib/flowlog.h), on crafted packets.

A connection is two events (its first packet, its first reply), a drop is
one, established packets are none; nothing at all while capture is off;
beyond the per-CPU budget, a counter instead of a ring write.
"""

from __future__ import annotations

import os

import pytest
from lxc_harness import DIR_EGRESS, POD_A, POD_B, TC_ACT_REDIRECT, on_ifindex
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from porin.maps.endpoints import EndpointEntry
from porin.maps.flow_config import FlowConfigMap
from porin.maps.flow_events import FLOW_DROP, FLOW_NEW, FLOW_REPLY, FlowRing
from porin.maps.flow_lost import FlowLostMap
from porin.maps.metrics import reason_by_name
from porin.models import Backend, Service

VIP = "10.96.0.20"


def sending(lxc, ep: EndpointEntry) -> None:
    """`ep` on the test interface (ifindex 1), the other pod behind a veth."""
    for other, idx in ((POD_A, 76), (POD_B, 77)):
        lxc.endpoints.upsert(on_ifindex(other, 1 if other.ip == ep.ip else idx))


def frame(ep: EndpointEntry, pkt) -> bytes:
    return bytes(Ether(src=ep.mac, dst=ep.node_mac) / pkt)


@pytest.fixture
def flows(lxc):
    root = os.path.dirname(lxc.metrics.path)
    config, ring, lost = FlowConfigMap(root), FlowRing(root), FlowLostMap(root)
    ring.skip_pending()

    class Flows:
        def on(self, rate: int = 0) -> None:
            config.set(True, rate)

        def off(self) -> None:
            config.set(False, 0)

        def events(self):
            return ring.flow_events()

        def lost(self):
            return lost.totals()

    try:
        yield Flows()
    finally:
        config.set(False, 0)
        ring.skip_pending()
        for m in (config, ring, lost):
            m.close()


def syn(sport: int, dst: str = POD_B.ip, dport: int = 8080):
    return IP(src=POD_A.ip, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1)


def test_nothing_is_written_while_capture_is_off(lxc, flows):
    sending(lxc, POD_A)
    assert lxc.run("from_container", frame(POD_A, syn(41000)))[0] == TC_ACT_REDIRECT
    assert flows.events() == []


def test_a_connection_is_its_first_packet_and_its_first_reply(lxc, flows):
    sending(lxc, POD_A)
    flows.on()
    first = frame(POD_A, syn(41001))
    assert lxc.run("from_container", first)[0] == TC_ACT_REDIRECT
    (ev,) = flows.events()
    assert (ev.type, ev.dir, ev.ep_id) == (FLOW_NEW, DIR_EGRESS, POD_A.endpoint_id)
    assert ev.reason == reason_by_name("FORWARDED").code
    assert ev.len == len(first) and len(ev.packet) == len(first)  # all of a short frame
    got = Ether(ev.packet)  # as it left: MACs rewritten for the receiver
    assert (got[IP].src, got[IP].dst, got[TCP].sport, got[TCP].dport) == (
        POD_A.ip,
        POD_B.ip,
        41001,
        8080,
    )
    # the initiator's next packet is established: no event
    ack = IP(src=POD_A.ip, dst=POD_B.ip) / TCP(sport=41001, dport=8080, flags="A", seq=2, ack=10)
    lxc.run("from_container", frame(POD_A, ack))
    assert flows.events() == []
    # the first reply is one event, the second none
    sending(lxc, POD_B)
    synack = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=41001, flags="SA", ack=2)
    lxc.run("from_container", frame(POD_B, synack))
    (reply,) = flows.events()
    assert (reply.type, reply.ep_id) == (FLOW_REPLY, POD_B.endpoint_id)
    assert Ether(reply.packet)[TCP].flags == "SA"
    data = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=41001, flags="PA", ack=2)
    lxc.run("from_container", frame(POD_B, data))
    assert flows.events() == []


def test_a_drop_is_an_event_with_its_reason(lxc, flows):
    sending(lxc, POD_A)
    flows.on()
    forged = IP(src="10.244.0.99", dst=POD_B.ip) / UDP(sport=5, dport=53)
    lxc.run("from_container", frame(POD_A, forged))
    (ev,) = flows.events()
    assert (ev.type, ev.reason) == (FLOW_DROP, reason_by_name("INVALID_SIP").code)


def test_a_service_connection_names_its_frontend(lxc, flows, services):
    sending(lxc, POD_A)
    services.upsert(
        Service(id=7, ip=VIP, port=80, protocol="tcp", backends=[Backend(POD_B.ip, 8080)])
    )
    flows.on()
    lxc.run("from_container", frame(POD_A, syn(41002, VIP, 80)))
    (ev,) = flows.events()
    assert ev.type == FLOW_NEW and ev.rev_nat == 7
    assert Ether(ev.packet)[IP].dst == POD_B.ip  # as it left: translated to the backend
    sending(lxc, POD_B)
    synack = IP(src=POD_B.ip, dst=POD_A.ip) / TCP(sport=8080, dport=41002, flags="SA", ack=2)
    lxc.run("from_container", frame(POD_B, synack))
    (reply,) = flows.events()
    assert reply.type == FLOW_REPLY and reply.rev_nat == 7
    assert Ether(reply.packet)[IP].src == VIP


def test_beyond_the_budget_a_counter_not_a_ring_write(lxc, flows):
    sending(lxc, POD_A)
    flows.on(rate=3)
    before = flows.lost()
    forged = frame(POD_A, IP(src="10.244.0.99", dst=POD_B.ip) / UDP(sport=5, dport=53))
    for _ in range(10):
        lxc.run("from_container", forged)
    assert len(flows.events()) == 3
    after = flows.lost()
    assert after["rateLimited"] - before["rateLimited"] == 7
    assert after["ringFull"] == before["ringFull"]


def test_a_connection_reusing_a_closed_ones_tuple_is_new_again(lxc, flows):
    """Under a high connection rate clients reuse ports within conntrack's
    lifetime of a closed entry: each connection is still two events."""
    sending(lxc, POD_A)
    flows.on()

    def tcp(src, dst, sport, dport, flags):
        return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)

    for round_ in range(2):
        sending(lxc, POD_A)
        lxc.run("from_container", frame(POD_A, syn(41010)))
        sending(lxc, POD_B)
        lxc.run("from_container", frame(POD_B, tcp(POD_B.ip, POD_A.ip, 8080, 41010, "SA")))
        kinds = [e.type for e in flows.events()]
        assert kinds == [FLOW_NEW, FLOW_REPLY], (round_, kinds)
        # both sides close
        sending(lxc, POD_A)
        lxc.run("from_container", frame(POD_A, tcp(POD_A.ip, POD_B.ip, 41010, 8080, "FA")))
        sending(lxc, POD_B)
        lxc.run("from_container", frame(POD_B, tcp(POD_B.ip, POD_A.ip, 8080, 41010, "FA")))
        assert flows.events() == []  # a close is no flow of its own
