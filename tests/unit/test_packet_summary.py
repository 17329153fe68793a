"""porin/packet_summary.py: what `porin monitor` says about a captured frame."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from porin.packet_summary import summarize

ETH = Ether(src="02:00:00:00:00:0a", dst="02:aa:00:00:00:0a")


def test_tcp_with_flags():
    text, f = summarize(
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=80, flags="SA"))
    )
    assert text == "10.0.0.1:1 -> 10.0.0.2:80 TCP SYN|ACK"
    assert (f["sport"], f["dport"], f["tcpFlags"], f["ethSrc"]) == (
        1,
        80,
        ["SYN", "ACK"],
        "02:00:00:00:00:0a",
    )


def test_udp_icmp_arp_ipv6():
    assert summarize(bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=53, dport=5353)))[
        0
    ] == ("1.1.1.1:53 -> 2.2.2.2:5353 UDP")
    text, f = summarize(bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=3, code=4)))
    assert text == "1.1.1.1 -> 2.2.2.2 ICMP dest-unreachable code 4"
    assert (f["icmpType"], f["icmpCode"]) == (3, 4)
    text, f = summarize(bytes(ETH / ARP(op=1, psrc="10.0.0.5", pdst="10.0.0.1")))
    assert text.startswith("ARP request who-has 10.0.0.1 from 10.0.0.5")
    assert summarize(bytes(ETH / IPv6()))[0] == "IPv6"


def test_truncated_and_fragments():
    frame = bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / TCP())
    assert summarize(frame[:20])[1]["truncated"]
    assert summarize(frame[:5])[0] == "truncated frame (5 bytes)"
    # a TCP header cut after the ports still names them
    assert summarize(frame[:38])[0] == "1.1.1.1:20 -> 2.2.2.2:80 TCP"
    frag = bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2", frag=10, proto=6) / (b"x" * 8))
    assert summarize(frag)[0] == "1.1.1.1 -> 2.2.2.2 TCP fragment"
