"""Every path of every program records its verdict exactly once.

Each case sends one packet along one path and compares the whole metrics
map before and after: exactly the listed (reason, direction) records rose,
by one packet each, and nothing else moved. A packet redirected from one
local pod into another is the one case recorded twice, once per endpoint
(lib/verdict.h).
"""

from __future__ import annotations

from collections import Counter

import pytest
from lxc_harness import (
    DIR_EGRESS,
    DIR_INGRESS,
    POD_A,
    POD_B,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    on_ifindex,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from porin.daemon.services import ServiceManager
from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.ipcache import IDENTITY_REMOTE_NODE, IpcacheEntry
from porin.maps.metrics import reason_by_name, reasons
from porin.maps.nonmasq import LpmKey, Present
from porin.maps.tunnel_config import TunnelConfig
from porin.models import Backend, Service

OUT, IN = DIR_EGRESS, DIR_INGRESS
VIP, EMPTY_VIP = "10.96.0.10", "10.96.0.11"
NODE_IP, PEER_NODE, PEER = "198.18.0.11", "198.18.0.12", "192.0.2.50"
REMOTE_POD = "10.244.2.5"


def from_a(l3) -> bytes:
    return bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac) / l3)


def wire(l3) -> bytes:
    return bytes(Ether(src="02:fe:00:00:00:fe", dst="02:fe:00:00:00:01") / l3)


def pod_node(lxc, tmp):
    """Pod A sends on the test interface; a service with B behind it, one without backends."""
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(POD_B)
    services = ServiceManager(lxc.lb, tmp)
    services.upsert(
        Service(id=1, ip=VIP, port=80, protocol="tcp", backends=[Backend(POD_B.ip, 8080)])
    )
    services.upsert(Service(id=2, ip=EMPTY_VIP, port=80, protocol="tcp", backends=[]))


def tunnel_node(lxc, tmp, mode="vxlan"):
    pod_node(lxc, tmp)
    lxc.tunnel.set(TunnelConfig.of(mode, 55, 1, NODE_IP, 1500))
    lxc.ipcache.upsert(IpcacheEntry(f"{REMOTE_POD}/32", 400, PEER_NODE))
    lxc.ipcache.upsert(IpcacheEntry(f"{PEER_NODE}/32", IDENTITY_REMOTE_NODE, "", node=True))


def uplink_node(lxc, tmp):
    """ifindex 1 is the uplink; pods sit behind their own veths."""
    lxc.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    lxc.nonmasq.put(LpmKey.of("10.244.0.0/16"), Present(1))
    lxc.endpoints.upsert(on_ifindex(POD_A, 76))
    lxc.endpoints.upsert(on_ifindex(POD_B, 77))
    services = ServiceManager(lxc.lb, tmp)
    services.upsert(
        Service(
            id=3,
            ip=NODE_IP,
            port=30080,
            protocol="tcp",
            type="NodePort",
            backends=[Backend(POD_B.ip, 8080)],
        )
    )
    services.upsert(Service(id=4, ip=NODE_IP, port=30081, protocol="tcp", backends=[]))


def masqueraded(lxc, tmp):
    uplink_node(lxc, tmp)
    pkt = egress_pod_a(TCP(sport=40000, dport=80, flags="S"))
    assert lxc.run("to_netdev", pkt)[0] == TC_ACT_OK


def ipip_node(lxc, tmp):
    uplink_node(lxc, tmp)
    lxc.tunnel.set(TunnelConfig.of("ipip", 0, 1, NODE_IP, 1500))
    lxc.ipcache.upsert(IpcacheEntry(f"{REMOTE_POD}/32", 400, PEER_NODE))
    lxc.ipcache.upsert(IpcacheEntry(f"{PEER_NODE}/32", IDENTITY_REMOTE_NODE, "", node=True))


def egress_pod_a(l4) -> bytes:
    return wire(IP(src=POD_A.ip, dst=PEER) / l4)


SYN = TCP(sport=1234, dport=80, flags="S")

CASES = {
    # from_container
    "truncated ARP": (
        pod_node,
        "from_container",
        bytes(Ether(src=POD_A.mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / (b"\0" * 10)),
        TC_ACT_SHOT,
        [("TRUNCATED", OUT)],
    ),
    "ARP request answered": (
        pod_node,
        "from_container",
        bytes(
            Ether(src=POD_A.mac, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=POD_A.mac, psrc=POD_A.ip, pdst="10.244.0.1")
        ),
        TC_ACT_REDIRECT,
        [("ARP_REPLY", OUT)],
    ),
    "ARP reply passed": (
        pod_node,
        "from_container",
        from_a(ARP(op=2, hwsrc=POD_A.mac, psrc=POD_A.ip, pdst="10.244.0.1")),
        TC_ACT_OK,
        [("ARP_PASS", OUT)],
    ),
    "ARP spoofed": (
        pod_node,
        "from_container",
        from_a(ARP(op=1, hwsrc=POD_A.mac, psrc=POD_B.ip, pdst="10.244.0.1")),
        TC_ACT_SHOT,
        [("ARP_SPOOFED", OUT)],
    ),
    "ARP not IPv4": (
        pod_node,
        "from_container",
        from_a(ARP(ptype=0x86DD, plen=4, psrc=POD_A.ip)),
        TC_ACT_SHOT,
        [("INVALID_ARP", OUT)],
    ),
    "IPv6 not routed": (
        pod_node,
        "from_container",
        from_a(IPv6(dst="fe80::1") / UDP()),
        TC_ACT_SHOT,
        [("IPV6_NOT_ROUTED", OUT)],
    ),
    "unknown ethertype": (
        pod_node,
        "from_container",
        bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac, type=0x88CC) / (b"x" * 40)),
        TC_ACT_SHOT,
        [("UNKNOWN_L3", OUT)],
    ),
    "bad IP header": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=POD_B.ip, ihl=4) / ICMP()),
        TC_ACT_SHOT,
        [("IP_OPTIONS_BAD", OUT)],
    ),
    "spoofed source IP": (
        pod_node,
        "from_container",
        from_a(IP(src="10.244.0.99", dst=POD_B.ip) / ICMP()),
        TC_ACT_SHOT,
        [("INVALID_SIP", OUT)],
    ),
    "spoofed source MAC": (
        pod_node,
        "from_container",
        bytes(
            Ether(src="02:de:ad:00:00:01", dst=POD_A.node_mac)
            / IP(src=POD_A.ip, dst=POD_B.ip)
            / ICMP()
        ),
        TC_ACT_SHOT,
        [("INVALID_SMAC", OUT)],
    ),
    "truncated TCP": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=POD_B.ip, proto=6) / (b"\0" * 8)),
        TC_ACT_SHOT,
        [("TRUNCATED", OUT)],
    ),
    "pod to local pod": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=POD_B.ip) / SYN),
        TC_ACT_REDIRECT,
        [("FORWARDED", OUT), ("FORWARDED", IN)],
    ),
    "TTL expired": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=POD_B.ip, ttl=1) / SYN),
        TC_ACT_OK,
        [("TTL_EXPIRED", OUT)],
    ),
    "service to local backend": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=VIP) / SYN),
        TC_ACT_REDIRECT,
        [("FORWARDED", OUT), ("FORWARDED", IN)],
    ),
    "service without backend": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=EMPTY_VIP) / SYN),
        TC_ACT_REDIRECT,
        [("NO_SERVICE_BACKEND", OUT)],
    ),
    "to the host stack": (
        pod_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=PEER) / SYN),
        TC_ACT_OK,
        [("TO_STACK", OUT)],
    ),
    "into the VXLAN overlay": (
        tunnel_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=REMOTE_POD) / SYN),
        TC_ACT_REDIRECT,
        [("TUNNELED", OUT)],
    ),
    "too big for the overlay": (
        tunnel_node,
        "from_container",
        from_a(IP(src=POD_A.ip, dst=REMOTE_POD, flags="DF") / TCP(flags="A") / (b"x" * 1480)),
        TC_ACT_REDIRECT,
        [("FRAG_NEEDED", OUT)],
    ),
    # to_container
    "host stack to pod": (
        pod_node,
        "to_container",
        bytes(Ether() / IP(src=PEER, dst=POD_A.ip) / SYN),
        TC_ACT_OK,
        [("TO_STACK", IN)],
    ),
    "host stack, not IPv4": (
        pod_node,
        "to_container",
        bytes(Ether(type=0x0806) / (b"x" * 28)),
        TC_ACT_OK,
        [("TO_STACK", IN)],
    ),
    "host stack, IPv6": (
        pod_node,
        "to_container",
        bytes(Ether() / IPv6(dst="fe80::1") / UDP()),
        TC_ACT_SHOT,
        [("IPV6_NOT_ROUTED", IN)],
    ),
    "host stack, truncated": (
        pod_node,
        "to_container",
        bytes(Ether() / IP(src=PEER, dst=POD_A.ip, proto=17) / b"\0\0"),
        TC_ACT_SHOT,
        [("TRUNCATED", IN)],
    ),
    # from_netdev
    "uplink, not IPv4": (
        uplink_node,
        "from_netdev",
        wire(IPv6(dst="fe80::1") / UDP()),
        TC_ACT_OK,
        [("HOST_PASS", IN)],
    ),
    "uplink, not for the node": (
        uplink_node,
        "from_netdev",
        wire(IP(src=PEER, dst="198.18.0.77") / SYN),
        TC_ACT_OK,
        [("HOST_PASS", IN)],
    ),
    "uplink, the node's own": (
        uplink_node,
        "from_netdev",
        wire(IP(src=PEER, dst=NODE_IP) / TCP(dport=22, flags="S")),
        TC_ACT_OK,
        [("HOST_PASS", IN)],
    ),
    "NodePort to a local backend": (
        uplink_node,
        "from_netdev",
        wire(IP(src=PEER, dst=NODE_IP) / TCP(sport=5555, dport=30080, flags="S")),
        TC_ACT_REDIRECT,
        [("NODEPORT", IN)],
    ),
    "NodePort without backend": (
        uplink_node,
        "from_netdev",
        wire(IP(src=PEER, dst=NODE_IP) / TCP(sport=5555, dport=30081, flags="S")),
        TC_ACT_REDIRECT,
        [("NO_SERVICE_BACKEND", IN)],
    ),
    "reply to a masqueraded flow": (
        masqueraded,
        "from_netdev",
        wire(IP(src=PEER, dst=NODE_IP) / TCP(sport=80, dport=40000, flags="SA")),
        TC_ACT_REDIRECT,
        [("REV_SNAT", IN)],
    ),
    "ICMP error about a masqueraded flow": (
        masqueraded,
        "from_netdev",
        wire(
            IP(src=PEER, dst=NODE_IP)
            / ICMP(type=3, code=3)
            / IP(src=NODE_IP, dst=PEER)
            / TCP(sport=40000, dport=80, flags="S")
        ),
        TC_ACT_REDIRECT,
        [("REV_SNAT", IN)],
    ),
    "IPIP from a node": (
        ipip_node,
        "from_netdev",
        wire(IP(src=PEER_NODE, dst=NODE_IP, proto=4) / IP(src=REMOTE_POD, dst=POD_A.ip) / SYN),
        TC_ACT_REDIRECT,
        [("FROM_TUNNEL", IN)],
    ),
    "IPIP from a stranger": (
        ipip_node,
        "from_netdev",
        wire(IP(src="198.18.0.99", dst=NODE_IP, proto=4) / IP(src=REMOTE_POD, dst=POD_A.ip) / SYN),
        TC_ACT_SHOT,
        [("UNKNOWN_NODE", IN)],
    ),
    # to_netdev
    "masqueraded out": (
        uplink_node,
        "to_netdev",
        egress_pod_a(SYN),
        TC_ACT_OK,
        [("MASQUERADED", OUT)],
    ),
    "not a pod's, out untouched": (
        uplink_node,
        "to_netdev",
        wire(IP(src=NODE_IP, dst=PEER) / SYN),
        TC_ACT_OK,
        [("HOST_PASS", OUT)],
    ),
    "fragment to masquerade, its first not seen": (
        uplink_node,
        "to_netdev",
        wire(IP(src=POD_A.ip, dst=PEER, frag=100, proto=6) / (b"x" * 40)),
        TC_ACT_OK,
        [("FRAG_UNKNOWN", OUT)],
    ),
    # from_host_lo
    "lo, not a service": (
        uplink_node,
        "from_host_lo",
        bytes(Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(dport=22, flags="S")),
        TC_ACT_OK,
        [("HOST_PASS", IN)],
    ),
    "lo, ICMP": (
        uplink_node,
        "from_host_lo",
        bytes(Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / ICMP()),
        TC_ACT_OK,
        [("HOST_PASS", IN)],
    ),
    "lo, NodePort": (
        uplink_node,
        "from_host_lo",
        bytes(Ether() / IP(src=NODE_IP, dst=NODE_IP) / TCP(sport=4444, dport=30080, flags="S")),
        TC_ACT_REDIRECT,
        [("NODEPORT", IN)],
    ),
    # from_overlay (BPF_PROG_TEST_RUN cannot attach tunnel metadata)
    "overlay without metadata": (
        pod_node,
        "from_overlay",
        bytes(Ether() / IP(src=REMOTE_POD, dst=POD_A.ip) / ICMP()),
        TC_ACT_SHOT,
        [("NO_TUNNEL_KEY", IN)],
    ),
}


def snapshot(lxc) -> Counter:
    return Counter({(m.reason, m.direction): m.packets for m in lxc.metrics.metrics()})


@pytest.mark.parametrize("case", list(CASES))
def test_each_path_records_its_verdict_exactly_once(lxc, tmp_path, case):
    setup, prog, packet, want_ret, want = CASES[case]
    setup(lxc, str(tmp_path))
    before = snapshot(lxc)
    ret, _ = lxc.run(prog, packet)
    moved = snapshot(lxc)
    moved.subtract(before)
    moved = +moved
    expected = Counter((reason_by_name(r).code, d) for r, d in want)
    assert ret == want_ret
    assert moved == expected, {(reason_name(k[0]), k[1]): v for k, v in moved.items()}


def reason_name(code: int) -> str:
    r = reasons().get(code)
    return r.name if r else str(code)
