"""Address, port and protocol codecs shared by the map modules: a key field
declared __be32 or __be16 in C is a ctypes integer whose bytes in memory
are in network order, whatever the host's byte order."""

from __future__ import annotations

import socket
import sys

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()} | {socket.IPPROTO_ICMP: "icmp"}


def ip_to_be(ip: str) -> int:
    """An IPv4 address as the u32 the kernel stores (network order in memory)."""
    return int.from_bytes(socket.inet_aton(ip), sys.byteorder)


def be_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, sys.byteorder))


def port_to_be(port: int) -> int:
    return socket.htons(port)


def be_to_port(value: int) -> int:
    return socket.ntohs(value)


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto)).upper()
