"""Shared constants and the handle the BPF tests drive the datapath through."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP

from porin.daemon.services import LbMaps
from porin.maps import syscall
from porin.maps.conntrack_tables import Conntrack
from porin.maps.endpoints import EndpointEntry, EndpointsMap
from porin.maps.host_devices import HostDevicesMap
from porin.maps.ipcache import IpcacheMap
from porin.maps.metrics import MetricsMap, reason_by_name
from porin.maps.nat import NatMap
from porin.maps.nonmasq import NonMasqMap
from porin.maps.policy import PolicyMap
from porin.maps.policy_cidr import PolicyCidrMap
from porin.maps.tunnel_config import TunnelConfigMap

# struct __sk_buff (uapi/linux/bpf.h): its size and the offsets test runs may set
SK_BUFF_SIZE = 192
SKB_MARK_OFF = 8
SKB_GSO_SEGS_OFF = 164

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
DIR_INGRESS = 1
DIR_EGRESS = 2


@dataclass
class Lxc:
    progs: dict
    endpoints: EndpointsMap
    metrics: MetricsMap
    ct: Conntrack
    lb: LbMaps
    nat: NatMap
    host_devices: HostDevicesMap
    nonmasq: NonMasqMap
    ipcache: IpcacheMap
    tunnel: TunnelConfigMap
    policy: PolicyMap
    policy_cidr: PolicyCidrMap

    def run(self, prog: str, packet: bytes) -> tuple[int, bytes]:
        ret, out, _ = syscall.prog_test_run(self.progs[prog].fd, packet)
        return ret, out

    def run_skb(
        self, prog: str, packet: bytes, mark: int = 0, gso_segs: int = 0
    ) -> tuple[int, bytes, int]:
        """Run with these skb fields set: (return value, packet, skb->mark after)."""
        ctx = bytearray(SK_BUFF_SIZE)
        struct.pack_into("<I", ctx, SKB_MARK_OFF, mark)
        struct.pack_into("<I", ctx, SKB_GSO_SEGS_OFF, gso_segs)
        ret, out, _, after = syscall.prog_test_run_ctx(self.progs[prog].fd, packet, bytes(ctx))
        return ret, out, struct.unpack_from("<I", after, SKB_MARK_OFF)[0]

    def count(self, reason: str, direction: int = DIR_EGRESS) -> int:
        return self.metrics.count(reason_by_name(reason).code, direction).packets


POD_A = EndpointEntry(
    ip="10.244.0.10",
    ifindex=1,
    endpoint_id=10,
    mac="02:00:00:00:00:0a",
    node_mac="02:aa:00:00:00:0a",
)
POD_B = EndpointEntry(
    ip="10.244.0.11",
    ifindex=77,
    endpoint_id=11,
    mac="02:00:00:00:00:0b",
    node_mac="02:aa:00:00:00:0b",
)


def on_ifindex(ep: EndpointEntry, ifindex: int) -> EndpointEntry:
    return EndpointEntry(ep.ip, ifindex, ep.endpoint_id, ep.mac, ep.node_mac)


def checksums_valid(pkt) -> bool:
    """True when scapy, recomputing from scratch, gets the same checksums."""
    ip = pkt[IP]
    fresh = IP(bytes(ip))
    del fresh.chksum
    l4 = next((cls for cls in (TCP, UDP, ICMP) if cls in fresh), None)
    keep_zero_udp = l4 is UDP and ip[UDP].chksum == 0
    if l4 is not None and not keep_zero_udp:
        del fresh[l4].chksum
    rebuilt = IP(bytes(fresh))
    if rebuilt.chksum != ip.chksum:
        return False
    return l4 is None or keep_zero_udp or rebuilt[l4].chksum == ip[l4].chksum
