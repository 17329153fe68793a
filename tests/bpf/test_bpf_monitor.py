"""Datapath events for `porin monitor` (bpf/lib/monitor.h), read back from
the pinned ring buffer the way the CLI reads them."""

from __future__ import annotations

import ctypes
import dataclasses
import os

import pytest
from lxc_harness import POD_A, POD_B, TC_ACT_REDIRECT, TC_ACT_SHOT
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from porin.maps.metrics import reason_by_name
from porin.maps.monitor_config import MONITOR_F_DROPS, MONITOR_F_TRACE, MonitorConfigMap
from porin.maps.monitor_events import MonitorEventC, RingBuffer
from porin.maps.monitor_lost import MonitorLostMap
from porin.packet_summary import summarize

SPOOFED = bytes(
    Ether(src=POD_A.mac, dst=POD_A.node_mac) / IP(src="10.244.0.99", dst=POD_B.ip) / ICMP(id=3)
)


@pytest.fixture
def monitored(lxc):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(POD_B)
    root = os.path.dirname(lxc.endpoints.path)
    with RingBuffer(root) as ring, MonitorConfigMap(root) as cfg:
        ring.skip_pending()
        try:
            yield lxc, ring, cfg
        finally:
            cfg.set_flags(0)


def test_nothing_is_reported_without_a_listener(monitored):
    lxc, ring, cfg = monitored
    cfg.set_flags(0)
    assert lxc.run("from_container", SPOOFED)[0] == TC_ACT_SHOT
    assert ring.events() == []


def test_a_drop_is_reported_with_its_reason_and_packet(monitored):
    lxc, ring, cfg = monitored
    cfg.set_flags(MONITOR_F_DROPS)
    assert lxc.run("from_container", SPOOFED)[0] == TC_ACT_SHOT
    (ev,) = ring.events()
    assert ev.type_name == "drop"
    assert ev.reason == reason_by_name("INVALID_SIP").code
    assert (ev.dir, ev.ifindex, ev.len) == (2, 1, len(SPOOFED))
    assert ev.packet == SPOOFED
    text, fields = summarize(ev.packet)
    assert (fields["src"], fields["dst"], fields["icmpId"]) == ("10.244.0.99", POD_B.ip, 3)
    assert text == f"10.244.0.99 -> {POD_B.ip} ICMP echo-request id=3"


def test_traces_only_when_asked_and_captures_are_capped(monitored):
    lxc, ring, cfg = monitored
    big = bytes(
        Ether(src=POD_A.mac, dst=POD_A.node_mac)
        / IP(src=POD_A.ip, dst=POD_B.ip)
        / TCP(sport=1234, dport=80, flags="S")
        / Raw(b"x" * 400)
    )
    cfg.set_flags(MONITOR_F_DROPS)
    assert lxc.run("from_container", big)[0] == TC_ACT_REDIRECT
    assert ring.events() == []
    cfg.set_flags(MONITOR_F_DROPS | MONITOR_F_TRACE)
    assert lxc.run("from_container", big)[0] == TC_ACT_REDIRECT
    (ev,) = ring.events()
    assert ev.type_name == "trace" and ev.reason == reason_by_name("FORWARDED").code
    assert ev.len == len(big) and ev.cap_len == 128 and len(ev.packet) == 128
    text, fields = summarize(ev.packet)
    assert fields["tcpFlags"] == ["SYN"] and text.endswith(f"{POD_B.ip}:80 TCP SYN")


def test_a_full_ring_loses_events_not_packets(monitored):
    lxc, ring, cfg = monitored
    root = os.path.dirname(lxc.endpoints.path)
    with MonitorLostMap(root) as lost:
        before = lost.total()
        cfg.set_flags(MONITOR_F_DROPS)
        per_event = ctypes.sizeof(MonitorEventC) + 8  # record header
        n = ring.size // per_event + 50
        for _ in range(n):
            assert lxc.run("from_container", SPOOFED)[0] == TC_ACT_SHOT
        assert lost.total() - before >= 40
        got = ring.events()
        assert 0 < len(got) <= ring.size // per_event
        # drained: there is room again
        assert lxc.run("from_container", SPOOFED)[0] == TC_ACT_SHOT
        assert len(ring.events()) == 1


def test_events_carry_endpoint_identities_and_conntrack_status(monitored):
    lxc, ring, cfg = monitored
    lxc.endpoints.upsert(dataclasses.replace(POD_A, identity=300))
    lxc.endpoints.upsert(dataclasses.replace(POD_B, identity=301))
    cfg.set_flags(MONITOR_F_DROPS | MONITOR_F_TRACE)
    syn = Ether(src=POD_A.mac, dst=POD_A.node_mac) / IP(src=POD_A.ip, dst=POD_B.ip)
    assert lxc.run("from_container", bytes(syn / TCP(sport=999, flags="S")))[0] == TC_ACT_REDIRECT
    assert lxc.run("from_container", bytes(syn / TCP(sport=999, flags="A")))[0] == TC_ACT_REDIRECT
    new, established = ring.events()
    for ev in (new, established):
        assert (ev.src_identity, ev.dst_identity, ev.ep_id) == (300, 301, POD_A.endpoint_id)
    assert (new.ct_status_name, established.ct_status_name) == ("new", "established")
    # a drop before the source is known carries no identity
    assert lxc.run("from_container", SPOOFED)[0] == TC_ACT_SHOT
    (drop,) = ring.events()
    assert (drop.src_identity, drop.dst_identity, drop.ep_id, drop.ct_status) == (0, 0, 0, 0)
