"""One line (and a JSON object) describing the start of a captured frame:
Ethernet, ARP, IPv4 and TCP/UDP/ICMP, as far as the captured bytes go.
Used by `porin monitor`; no dependencies, so the CLI stays light."""

from __future__ import annotations

import socket
import struct
from typing import Any

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP"}
TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"))
ICMP_TYPES = {
    0: "echo-reply",
    3: "dest-unreachable",
    8: "echo-request",
    11: "time-exceeded",
}


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def summarize(frame: bytes) -> tuple[str, dict[str, Any]]:
    """(text, fields) for a frame captured from its Ethernet header on."""
    if len(frame) < 14:
        return f"truncated frame ({len(frame)} bytes)", {"truncated": True}
    dst, src, ethertype = frame[:6], frame[6:12], struct.unpack_from("!H", frame, 12)[0]
    fields: dict[str, Any] = {"ethSrc": _mac(src), "ethDst": _mac(dst), "ethertype": ethertype}
    body = frame[14:]
    if ethertype == ETH_P_ARP and len(body) >= 28:
        op = struct.unpack_from("!H", body, 6)[0]
        sip, tip = socket.inet_ntoa(body[14:18]), socket.inet_ntoa(body[24:28])
        fields.update(proto="ARP", arpOp=op, src=sip, dst=tip)
        what = "request who-has" if op == 1 else "reply" if op == 2 else f"op {op}"
        return f"ARP {what} {tip} from {sip} ({_mac(body[8:14])})", fields
    if ethertype == ETH_P_IPV6:
        return "IPv6", {**fields, "proto": "IPv6"}
    if ethertype != ETH_P_IP:
        return f"ethertype {ethertype:#06x} {_mac(src)} -> {_mac(dst)}", fields
    if len(body) < 20:
        return "IPv4, truncated header", {**fields, "truncated": True}
    ihl = (body[0] & 0x0F) * 4
    proto, saddr, daddr = body[9], socket.inet_ntoa(body[12:16]), socket.inet_ntoa(body[16:20])
    frag = struct.unpack_from("!H", body, 6)[0]
    fields.update(src=saddr, dst=daddr, ipProto=proto, ttl=body[8])
    fields["proto"] = PROTO_NAMES.get(proto, str(proto))
    l4 = body[ihl:] if ihl >= 20 else b""
    if frag & 0x1FFF:
        return f"{saddr} -> {daddr} {fields['proto']} fragment", {**fields, "fragment": True}
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4, 0)
        fields.update(sport=sport, dport=dport)
        text = f"{saddr}:{sport} -> {daddr}:{dport} {fields['proto']}"
        if proto == 6 and len(l4) >= 14:
            flags = [n for bit, n in TCP_FLAGS if l4[13] & bit]
            fields["tcpFlags"] = flags
            text += (" " + "|".join(flags)) if flags else ""
        return text, fields
    if proto == 1 and len(l4) >= 4:
        typ, code = l4[0], l4[1]
        fields.update(icmpType=typ, icmpCode=code)
        name = ICMP_TYPES.get(typ, f"type {typ}")
        text = f"{saddr} -> {daddr} ICMP {name}"
        if typ in (0, 8) and len(l4) >= 8:
            ident = struct.unpack_from("!H", l4, 4)[0]
            fields["icmpId"] = ident
            text += f" id={ident}"
        elif typ != 0 and typ != 8:
            text += f" code {code}"
        return text, fields
    return f"{saddr} -> {daddr} {fields['proto']}", fields
