"""The packet `porin trace` builds, checked independently with scapy, and the
trace request's validation."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from porin.daemon.trace import TraceRequest
from porin.daemon.trace_explain import jhash_3words, maglev_slot
from porin.daemon.trace_packet import TraceInputError, TracePacket, tcp_flags


def _checked(frame: bytes, layer: type) -> None:
    p = Ether(frame)
    ip, l4 = p[IP], p[layer]
    want_ip, want_l4 = ip.chksum, l4.chksum
    del ip.chksum, l4.chksum
    again = Ether(bytes(p))
    assert again[IP].chksum == want_ip
    assert again[layer].chksum == want_l4


@pytest.mark.parametrize("proto,layer", [("tcp", TCP), ("udp", UDP), ("icmp", ICMP)])
def test_frames_carry_correct_checksums(proto, layer):
    frame = TracePacket("10.0.0.1", "10.96.0.10", proto, sport=40000, dport=80).frame()
    p = Ether(frame)
    assert (p[IP].src, p[IP].dst, p[IP].ttl, p[IP].flags.DF) == ("10.0.0.1", "10.96.0.10", 64, 1)
    if proto != "icmp":
        assert (p[layer].sport, p[layer].dport) == (40000, 80)
    else:
        assert (p[ICMP].type, p[ICMP].id) == (8, 40000)
    _checked(frame, layer)


def test_tcp_flags_and_payload():
    syn = Ether(TracePacket("10.0.0.1", "10.0.0.2", "tcp", 1, 2, flags="S").frame())
    assert syn[TCP].flags == "S" and len(syn[TCP].payload) == 0
    ack = Ether(TracePacket("10.0.0.1", "10.0.0.2", "tcp", 1, 2, flags="PA").frame())
    assert ack[TCP].flags == "PA" and bytes(ack[TCP].payload)
    assert tcp_flags("FA") == 0x11 and tcp_flags(".") == 0x10
    with pytest.raises(TraceInputError, match="unknown TCP flag 'X'"):
        tcp_flags("SX")


@pytest.mark.parametrize(
    "body,msg",
    [
        ([], "JSON object"),
        ({"from": "a/b"}, "'to' is required"),
        ({"from": "a/b", "to": "10.0.0.1", "port": 80, "colour": 1}, "unknown field"),
        ({"from": "a/b", "to": "10.0.0.1", "port": 70000}, "port number"),
        ({"from": "a/b", "to": "10.0.0.1", "port": True}, "port number"),
        ({"from": "a/b", "to": "10.0.0.1", "protocol": "sctp", "port": 1}, "use tcp, udp"),
        ({"from": "a/b", "to": "10.0.0.1"}, "needs a destination port"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(body, msg):
    with pytest.raises(TraceInputError, match=msg):
        TraceRequest.from_json(body)


def test_bad_addresses_are_refused():
    for dst in ("10.0.0", "fe80::1", "10.0.0.256"):
        with pytest.raises(TraceInputError, match="IPv4"):
            TracePacket("10.0.0.1", dst, "udp", 1, 2).frame()


def test_icmp_needs_no_port():
    r = TraceRequest.from_json({"from": "1", "to": "10.0.0.1", "protocol": "icmp"})
    assert r.port == 0 and r.protocol == "icmp"


def test_jhash_and_the_maglev_slot_match_the_datapaths_c():
    # reference values from bpf/lib/hash.h's jhash_3words compiled with gcc
    assert (
        jhash_3words(
            0,
            0,
            0,
            0,
        )
        == 459859287
    )
    assert jhash_3words(0xDEADBEEF, 1, 2, 17) == 2316111146
    # 10.0.0.1:40000 -> 10.96.0.10:80/tcp as lb4_pick_maglev hashes it (network
    # order words read on a little-endian CPU)
    assert jhash_3words(0x0100000A, 0x0A00600A, (0x409C << 16) | 0x5000, 6) == 3024666107
    frame = TracePacket("10.0.0.1", "10.96.0.10", "tcp", 40000, 80).frame()
    assert maglev_slot(frame, 16381) == 3024666107 % 16381
