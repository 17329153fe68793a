"""The packet `porin trace` sends through the programs: Ethernet, IPv4 and
TCP, UDP or an ICMP echo request, with correct checksums.

Written out here rather than with scapy: the agent builds it, and the agent
does not depend on a packet library for one header of each kind.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from porin.errors import PorinError

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
ETH_P_IP = 0x0800
PAYLOAD = b"porin-trace\n"


class TraceInputError(PorinError, ValueError):
    """The packet asked for cannot be built (an HTTP 400)."""

    http_status = 400


def inet_csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_flags(text: str) -> int:
    """`S`, `SA`, `A`, `FA`, `R`, ... (tcpdump's letters; `.` is ACK)."""
    bits = 0
    for ch in text.upper().replace(".", "A").replace("|", "").replace(",", ""):
        if ch not in TCP_FLAG_BITS:
            raise TraceInputError(
                f"unknown TCP flag {ch!r} in {text!r}: use S, A, F, R, P, U (e.g. S or SA)"
            )
        bits |= TCP_FLAG_BITS[ch]
    return bits


def _ip4(text: str, what: str) -> bytes:
    try:
        if text.count(".") == 3:
            return socket.inet_aton(text)
    except OSError:
        pass
    raise TraceInputError(f"{what} {text!r} is not an IPv4 address")


@dataclass
class TracePacket:
    """What to send: addresses, ports, protocol, TCP flags, and the frame's MACs."""

    src: str
    dst: str
    proto: str  # tcp, udp, icmp
    sport: int = 0
    dport: int = 0
    flags: str = "S"  # TCP only
    src_mac: str = "02:00:00:00:00:01"
    dst_mac: str = "02:00:00:00:00:02"
    ttl: int = 64
    ip_id: int = 0x7A11
    payload: bytes = field(default=PAYLOAD, repr=False)

    def frame(self) -> bytes:
        proto = PROTOCOLS.get(self.proto)
        if proto is None:
            raise TraceInputError(f"protocol {self.proto!r}: use tcp, udp or icmp")
        saddr, daddr = _ip4(self.src, "source"), _ip4(self.dst, "destination")
        for what, port in (("source", self.sport), ("destination", self.dport)):
            if proto != 1 and not 0 < port < 65536:
                raise TraceInputError(f"{what} port {port} is out of range (1-65535)")
        if proto == 6:
            l4 = struct.pack(
                "!HHIIBBHHH",
                self.sport,
                self.dport,
                1,
                0,
                5 << 4,
                tcp_flags(self.flags),
                64240,
                0,
                0,
            )
            l4 += b"" if tcp_flags(self.flags) & TCP_FLAG_BITS["S"] else self.payload
        elif proto == 17:
            l4 = struct.pack("!HHHH", self.sport, self.dport, 8 + len(self.payload), 0)
            l4 += self.payload
        else:
            l4 = struct.pack("!BBHHH", 8, 0, 0, self.sport or 0x7A11, 1) + self.payload
        if proto in (6, 17):
            pseudo = saddr + daddr + struct.pack("!BBH", 0, proto, len(l4))
            c = inet_csum(pseudo + l4)
            if proto == 17 and c == 0:
                c = 0xFFFF
            off = 16 if proto == 6 else 6
            l4 = l4[:off] + struct.pack("!H", c) + l4[off + 2 :]
        else:
            l4 = l4[:2] + struct.pack("!H", inet_csum(l4)) + l4[4:]
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(l4),
            self.ip_id,
            0x4000,
            self.ttl,
            proto,
            0,
            saddr,
            daddr,
        )
        ip = ip[:10] + struct.pack("!H", inet_csum(ip)) + ip[12:]
        eth = _mac(self.dst_mac) + _mac(self.src_mac) + struct.pack("!H", ETH_P_IP)
        return eth + ip + l4


def _mac(text: str) -> bytes:
    try:
        raw = bytes(int(x, 16) for x in text.split(":"))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise TraceInputError(f"{text!r} is not a MAC address")
    return raw
