"""The node network the NodePort tests build on: this node, two others with a
pod each, their addresses, and crafted packets from an outside client. The
fixtures over them (`node_net`, `cluster`) are in conftest.py."""

from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from porin.models import Backend, Service

XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
NODE_IP, PEER_NODE, THIRD_NODE = "198.18.0.11", "198.18.0.12", "198.18.0.13"
PEER_MAC, THIRD_MAC = "02:aa:00:00:00:12", "02:aa:00:00:00:13"
REMOTE_POD, OTHER_POD = "10.244.2.5", "10.244.3.5"
CLIENT = "203.0.113.7"
NODE_PORT = 30090


def nodeport(services, *backends: str, algorithm: str = "random", policy: str = "cluster"):
    services.upsert(
        Service(
            id=9,
            ip="10.96.0.90",
            port=80,
            type="nodeport",
            node_port=NODE_PORT,
            algorithm=algorithm,
            external_traffic_policy=policy,
            backends=[Backend(b, 8080) for b in backends],
        )
    )


def from_client(l4, size: int = 0, df: bool = True, src: str = CLIENT) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01")
        / IP(src=src, dst=NODE_IP, flags="DF" if df else 0, id=77)
        / l4
        / Raw(b"d" * size)
    )
