"""Address and protocol helpers shared by the load-balancer map modules."""

from __future__ import annotations

import socket

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()} | {socket.IPPROTO_ICMP: "icmp"}


def ip_to_be(ip: str) -> int:
    """An IPv4 address as the u32 the kernel stores (network order in memory)."""
    return int.from_bytes(socket.inet_aton(ip), "little")


def be_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "little"))


def port_to_be(port: int) -> int:
    return socket.htons(port)


def be_to_port(value: int) -> int:
    return socket.ntohs(value)


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto)).upper()
