#!/usr/bin/env python3
"""Hostile packets through every entry program, with BPF_PROG_TEST_RUN.

    hack/fuzz [--packets N] [--seed S] [--program NAME ...] [-o json]

The real datapath is compiled into a private bpffs root and its maps are
populated as a node's would be: two local pods, an uplink that masquerades,
a remote node and its pods (ipcache, overlay), a ClusterIP and a NodePort
service balanced in XDP, and established flows in conntrack and NAT. Each
entry program then gets N packets (default 100,000): valid packets of its
own path, mutated at every layer (truncated at every offset, wrong IHL and
total length, IP options, fragments with odd offsets, every TCP flag
combination, ICMP errors quoting garbage or real flows, VXLAN and IPIP
around bad inner packets, ARP with mismatched fields, bit flips) and random
bytes. Checked for every batch of one kind:

- every return value is one the program documents (tc: OK, SHOT, REDIRECT;
  XDP: DROP, PASS, TX, REDIRECT; never XDP_ABORTED);
- the metrics map counts exactly one verdict per packet the kernel ran,
  under a reason bpf/lib/reasons.h names (and xdp_actions one action);
- malformed packets (random bytes, truncated, bad IPv4 header) create no
  conntrack or NAT entry;
- the bystander flows set up before (a pod-to-pod connection, a service
  flow, a masqueraded flow) are byte for byte what they were afterwards.

Entries a batch created are removed after it, so every batch meets the same
populated maps. The seed is printed; the same seed replays the same packets.
Frames the kernel's test run itself refuses (shorter than an Ethernet header,
or an IPv4 or IPv6 ethertype without a whole fixed header) are counted as
refused, not run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from porinlab import Netns, in_netns

from porin.daemon.config import AgentConfig
from porin.daemon.datapath import compile_programs
from porin.daemon.services import LbMaps, NodeContext, ServiceManager
from porin.maps import syscall
from porin.maps.conntrack import ConntrackMap
from porin.maps.endpoints import EndpointEntry, EndpointsMap
from porin.maps.host_devices import HostDevice, sync_host_devices
from porin.maps.ipcache import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IpcacheEntry, IpcacheMap
from porin.maps.metrics import MetricsMap, reasons
from porin.maps.nat import NatMap
from porin.maps.nonmasq import NonMasqMap
from porin.maps.tunnel_config import TunnelConfig, TunnelConfigMap
from porin.maps.xdp_actions import XdpActionsMap
from porin.models import Backend, Service

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
DIR_INGRESS = 1
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
TC_VERDICTS = {TC_ACT_OK: "OK", TC_ACT_SHOT: "SHOT", TC_ACT_REDIRECT: "REDIRECT"}
XDP_VERDICTS = {XDP_DROP: "DROP", XDP_PASS: "PASS", XDP_TX: "TX", XDP_REDIRECT: "REDIRECT"}

# (entry file, program): what it may return
PROGRAMS: dict[str, tuple[str, dict[int, str]]] = {
    "from_container": ("bpf_lxc.c", TC_VERDICTS),
    "to_container": ("bpf_lxc.c", TC_VERDICTS),
    "from_netdev": ("bpf_host.c", TC_VERDICTS),
    "to_netdev": ("bpf_host.c", TC_VERDICTS),
    "from_host_lo": ("bpf_host.c", TC_VERDICTS),
    "from_overlay": ("bpf_overlay.c", TC_VERDICTS),
    "from_xdp": ("bpf_xdp.c", XDP_VERDICTS),
}

NODE_IP, PEER_NODE, EXT_IP, OUTSIDE = "198.18.0.11", "198.18.0.12", "198.18.0.100", "203.0.113.7"
NODE_MAC, EXT_MAC = "02:aa:00:00:00:01", "02:ee:00:00:00:64"
REMOTE_POD, GATEWAY = "10.244.2.5", "10.244.0.1"
SVC_IP, SVC_PORT, NODE_PORT = "10.96.0.10", 80, 30080
POD_A = EndpointEntry("10.244.0.10", 1, 10, "02:00:00:00:00:0a", "02:aa:00:00:00:0a", identity=300)
POD_B = EndpointEntry("10.244.0.11", 77, 11, "02:00:00:00:00:0b", "02:aa:00:00:00:0b", identity=301)
BYSTANDER_PORTS = (50000, 50001, 50002)  # source ports no packet of the corpus uses

# kinds whose packets are malformed: they must leave no conntrack or NAT entry
MALFORMED = ("random", "truncated", "ip_header")


@dataclass
class Batch:
    kind: str
    packets: list[bytes]


@dataclass
class ProgramResult:
    program: str
    packets: int = 0
    refused: int = 0  # the kernel's test run refused the frame (shorter than Ethernet)
    verdicts: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "packets": self.packets,
            "refusedByKernel": self.refused,
            "verdicts": dict(self.verdicts),
            "kinds": dict(self.by_kind),
            "failures": self.failures,
        }


# ---------------------------------------------------------------- the site


class Site:
    """The compiled datapath over populated maps, in a namespace of its own
    (so FIB lookups see an empty, predictable table)."""

    def __init__(
        self, programs: list[str], root: str | None = None, fds: dict[str, int] | None = None
    ) -> None:
        """Compile `programs` into a private root, or (with `root` and `fds`)
        fuzz programs already loaded over the maps pinned there."""
        self.owned = root is None
        self.root = root or f"/sys/fs/bpf/plfuzz-{uuid.uuid4().hex[:8]}"
        self.state = tempfile.mkdtemp(prefix="plfuzz-")
        self.ns = Netns(kind="fuzz")
        self.modules: list[Any] = []
        self.fds: dict[str, int] = dict(fds or {})
        try:
            if self.owned:
                self._compile(programs)
            self.metrics = MetricsMap(self.root)
            self.ct = ConntrackMap(self.root)
            self.nat = NatMap(self.root)
            self.xdp_actions = XdpActionsMap(self.root) if "from_xdp" in self.fds else None
            self._populate()
        except BaseException:
            self.close()
            raise

    def _compile(self, programs: list[str]) -> None:
        cfg = AgentConfig(bpffs_root=self.root, node_port_mode="dsr")
        files: dict[str, list[str]] = {}
        for p in programs:
            files.setdefault(PROGRAMS[p][0], []).append(p)
        for path, names in files.items():
            module, progs = compile_programs(path, cfg, names)
            self.modules.append(module)
            self.fds.update({n: progs[n].fd for n in names})

    def _populate(self) -> None:
        eps = EndpointsMap(self.root)
        eps.upsert(POD_A)
        eps.upsert(POD_B)
        sync_host_devices(self.root, {1: HostDevice.of(NODE_IP, masquerade=True)})
        NonMasqMap(self.root).sync(["10.244.0.0/16"])
        ipc = IpcacheMap(self.root)
        ipc.upsert(IpcacheEntry("10.244.2.0/24", 0, PEER_NODE))
        ipc.upsert(IpcacheEntry(f"{REMOTE_POD}/32", 400, PEER_NODE))
        ipc.upsert(IpcacheEntry(f"{PEER_NODE}/32", IDENTITY_REMOTE_NODE, "", node=True))
        ipc.upsert(IpcacheEntry(f"{NODE_IP}/32", IDENTITY_HOST, "", node=True))
        TunnelConfigMap(self.root).set(TunnelConfig.of("vxlan", 55, 1, NODE_IP, 1500))
        svcs = ServiceManager(
            LbMaps.open(self.root),
            self.state,
            NodeContext(
                node_ips=[NODE_IP], is_local=lambda ip: ip.startswith("10.244.0."),
                xdp_node_ports=True,
            ),
        )  # fmt: skip
        backends = [Backend(POD_B.ip, 8080), Backend(REMOTE_POD, 8080)]
        svcs.upsert(Service(id=1, ip=SVC_IP, port=SVC_PORT, backends=backends))
        svcs.upsert(
            Service(id=2, ip="10.96.0.11", port=SVC_PORT, type="nodeport", node_port=NODE_PORT,
                    algorithm="maglev", backends=backends)
        )  # fmt: skip
        # the bystanders: established before the fuzzing, untouched by it
        with in_netns(self.ns.path):
            for prog, pkt in bystander_packets():
                if prog in self.fds:
                    syscall.prog_test_run(self.fds[prog], pkt)

    def run(self, prog: str, pkt: bytes) -> int | None:
        """The program's return value, or None when the kernel refused the frame."""
        try:
            return syscall.prog_test_run(self.fds[prog], pkt)[0]
        except syscall.BpfError as e:
            if e.errno == 22:  # EINVAL: the test run takes no frame this short
                return None
            raise

    def counted(self) -> Counter:
        """Packets the metrics map holds, by (reason, direction)."""
        return Counter({(m.reason, m.direction): m.packets for m in self.metrics.metrics()})

    def xdp_counted(self) -> int:
        return sum(self.xdp_actions.totals().values()) if self.xdp_actions else 0

    def state_snapshot(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        return _raw_items(self.ct), _raw_items(self.nat)

    def restore(self, ct: dict[bytes, bytes], nat: dict[bytes, bytes]) -> None:
        """Remove what a batch created, so the next one meets the same maps."""
        now_ct, now_nat = self.state_snapshot()
        for m, before, now in ((self.ct, ct, now_ct), (self.nat, nat, now_nat)):
            extra = [k for k in now if k not in before]
            if extra:
                m.delete_packed(b"".join(extra), len(extra))

    def close(self) -> None:
        for m in self.modules:
            m.cleanup()
        self.ns.close()
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)


def _raw_items(m: Any) -> dict[bytes, bytes]:
    keys, vals, n = m.dump_raw()
    ks, vs = len(keys) // n if n else 0, len(vals) // n if n else 0
    return {keys[i * ks : (i + 1) * ks]: vals[i * vs : (i + 1) * vs] for i in range(n)}


# ---------------------------------------------------------------- packets


def _scapy() -> Any:
    from scapy import all as s

    return s


def from_pod(l3: Any) -> bytes:
    s = _scapy()
    return bytes(s.Ether(src=POD_A.mac, dst=POD_A.node_mac) / l3)


def to_pod(l3: Any) -> bytes:
    s = _scapy()
    return bytes(s.Ether(src=POD_A.node_mac, dst=POD_A.mac) / l3)


def from_wire(l3: Any) -> bytes:
    s = _scapy()
    return bytes(s.Ether(src=EXT_MAC, dst=NODE_MAC) / l3)


def bystander_packets() -> list[tuple[str, bytes]]:
    s = _scapy()
    a, b = POD_A.ip, POD_B.ip
    p0, p1, p2 = BYSTANDER_PORTS
    return [
        ("from_container", from_pod(s.IP(src=a, dst=b) / s.TCP(sport=p0, dport=9000, flags="S"))),
        ("to_container", to_pod(s.IP(src=b, dst=a) / s.TCP(sport=9000, dport=p0, flags="SA"))),
        ("from_container", from_pod(s.IP(src=a, dst=b) / s.TCP(sport=p0, dport=9000, flags="A"))),
        ("from_container", from_pod(s.IP(src=a, dst=SVC_IP) / s.TCP(sport=p1, dport=SVC_PORT))),
        ("to_netdev", from_pod(s.IP(src=a, dst="192.0.2.99") / s.UDP(sport=p2, dport=443))),
    ]


def bases(prog: str) -> list[bytes]:
    """Valid packets of the program's own paths, the seeds of the mutations."""
    s = _scapy()
    a, b = POD_A.ip, POD_B.ip
    tcp_reply = s.IP(src=b, dst=a) / s.TCP(sport=8080, dport=40001, flags="SA")
    vxlan_inner = s.Ether() / s.IP(src=REMOTE_POD, dst=a) / s.TCP(sport=80, dport=40004)
    if prog == "from_container":
        return [
            from_pod(s.IP(src=a, dst=b) / s.TCP(sport=40001, dport=8080, flags="S")),
            from_pod(s.IP(src=a, dst=SVC_IP) / s.TCP(sport=40002, dport=SVC_PORT, flags="S")),
            from_pod(s.IP(src=a, dst=OUTSIDE) / s.UDP(sport=40003, dport=53) / (b"q" * 20)),
            from_pod(s.IP(src=a, dst=b) / s.ICMP(type=8, id=7, seq=1) / (b"p" * 16)),
            from_pod(s.IP(src=a, dst=REMOTE_POD) / s.TCP(sport=40004, dport=80, flags="S")),
            from_pod(s.IP(src=a, dst=b) / s.ICMP(type=3, code=3) / bytes(tcp_reply)[:28]),
            from_pod(s.IP(src=a, dst=NODE_IP) / s.UDP(sport=40005, dport=8472) / (b"x" * 16)),
            bytes(
                s.Ether(src=POD_A.mac, dst="ff:ff:ff:ff:ff:ff")
                / s.ARP(op=1, hwsrc=POD_A.mac, psrc=a, pdst=GATEWAY)
            ),
            from_pod(s.IPv6(dst="ff02::1") / s.ICMPv6ND_RA()),
        ]
    if prog == "to_container":
        return [
            to_pod(tcp_reply),
            to_pod(s.IP(src=OUTSIDE, dst=a) / s.UDP(sport=53, dport=40003) / (b"r" * 20)),
            to_pod(s.IP(src=GATEWAY, dst=a) / s.ICMP(type=8) / (b"p" * 16)),
            to_pod(s.IP(src=SVC_IP, dst=a) / s.TCP(sport=SVC_PORT, dport=40002, flags="SA")),
            bytes(
                s.Ether(src=POD_A.node_mac, dst=POD_A.mac)
                / s.ARP(op=2, hwsrc=POD_A.node_mac, psrc=GATEWAY, pdst=a)
            ),
        ]
    if prog in ("from_netdev", "from_xdp"):
        dsr_opt = s.IPOption(b"\x9a\x08" + s.inet_aton(NODE_IP) + struct.pack("!H", NODE_PORT))
        return [
            from_wire(s.IP(src=EXT_IP, dst=NODE_IP) / s.TCP(sport=5000, dport=NODE_PORT)),
            from_wire(s.IP(src=EXT_IP, dst=NODE_IP) / s.UDP(sport=5001, dport=NODE_PORT) / b"u"),
            from_wire(s.IP(src=EXT_IP, dst=NODE_IP) / s.ICMP(type=8) / (b"p" * 16)),
            from_wire(
                s.IP(src=PEER_NODE, dst=NODE_IP)
                / s.UDP(sport=40000, dport=8472)
                / s.VXLAN(vni=400)
                / vxlan_inner
            ),
            from_wire(
                s.IP(src=PEER_NODE, dst=NODE_IP, options=[dsr_opt])
                / s.IP(src=EXT_IP, dst=b)
                / s.TCP(sport=5002, dport=8080, flags="S")
            ),
            from_wire(
                s.IP(src=PEER_NODE, dst=NODE_IP, proto=4)
                / s.IP(src=REMOTE_POD, dst=a)
                / s.TCP(sport=80, dport=40004, flags="SA")
            ),
            from_wire(s.IP(src=OUTSIDE, dst=NODE_IP) / s.UDP(sport=53, dport=40003)),
            from_wire(
                s.IP(src=OUTSIDE, dst=NODE_IP)
                / s.ICMP(type=3, code=4, nexthopmtu=1400)
                / bytes(s.IP(src=NODE_IP, dst=OUTSIDE) / s.UDP(sport=40003, dport=53))[:28]
            ),
            bytes(
                s.Ether(src=EXT_MAC, dst="ff:ff:ff:ff:ff:ff")
                / s.ARP(op=1, hwsrc=EXT_MAC, psrc=EXT_IP, pdst=NODE_IP)
            ),
        ]
    if prog == "to_netdev":
        return [
            from_pod(s.IP(src=a, dst=OUTSIDE) / s.UDP(sport=40003, dport=53) / (b"q" * 20)),
            from_pod(s.IP(src=a, dst=OUTSIDE) / s.TCP(sport=40006, dport=443, flags="S")),
            from_wire(s.IP(src=NODE_IP, dst=EXT_IP) / s.TCP(sport=22, dport=5000, flags="SA")),
            from_pod(s.IP(src=a, dst=OUTSIDE) / s.ICMP(type=8, id=9) / (b"p" * 8)),
        ]
    if prog == "from_host_lo":
        return [
            bytes(s.Ether() / s.IP(src=NODE_IP, dst=NODE_IP) / s.TCP(sport=40007, dport=NODE_PORT)),
            bytes(s.Ether() / s.IP(src="127.0.0.1", dst="127.0.0.1") / s.UDP(dport=NODE_PORT)),
            bytes(s.Ether() / s.IP(src=NODE_IP, dst=SVC_IP) / s.TCP(sport=40008, dport=SVC_PORT)),
        ]
    if prog == "from_overlay":
        return [
            bytes(vxlan_inner),
            bytes(s.Ether() / s.IP(src=REMOTE_POD, dst=a) / s.ICMP(type=8) / (b"p" * 8)),
            bytes(s.Ether() / s.IP(src=REMOTE_POD, dst=SVC_IP) / s.UDP(dport=SVC_PORT)),
        ]
    raise KeyError(prog)


ETH, IPV4 = 14, 0x0800


def _is_ipv4(pkt: bytes) -> bool:
    return len(pkt) >= ETH + 20 and pkt[12:14] == b"\x08\x00" and pkt[14] >> 4 == 4


def _ip_fix(pkt: bytearray, off: int = ETH) -> None:
    """Recompute the IPv4 header checksum at `off` (its other fields as they are)."""
    ihl = (pkt[off] & 15) * 4
    if ihl < 20 or off + ihl > len(pkt):
        return
    pkt[off + 10 : off + 12] = b"\0\0"
    pkt[off + 10 : off + 12] = struct.pack("!H", _csum(bytes(pkt[off : off + ihl])))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def truncated(base: list[bytes]) -> Iterator[bytes]:
    for pkt in base:
        for k in range(len(pkt)):
            yield pkt[:k]


def ip_header(base: list[bytes], rnd: random.Random) -> Iterator[bytes]:
    """Bad IPv4 headers: IHL below 5, version not 4, total length below the
    header or beyond the frame."""
    for pkt in filter(_is_ipv4, base):
        for ihl in range(5):
            p = bytearray(pkt)
            p[ETH] = 0x40 | ihl
            yield bytes(p)
        for version in (0, 1, 5, 6, 7, 15):
            p = bytearray(pkt)
            p[ETH] = (version << 4) | (p[ETH] & 15)
            _ip_fix(p)
            yield bytes(p)
        for tot in (0, 1, 19, 20 + (pkt[ETH] & 15) * 4 - 21, len(pkt) - ETH + 1, 0xFFFF):
            p = bytearray(pkt)
            p[ETH + 2 : ETH + 4] = struct.pack("!H", max(0, tot))
            _ip_fix(p)
            yield bytes(p)
        p = bytearray(pkt)
        p[ETH + 2 : ETH + 4] = struct.pack("!H", rnd.randrange(len(pkt) - ETH + 1, 0x10000))
        yield bytes(p)


def ip_options(base: list[bytes], rnd: random.Random) -> Iterator[bytes]:
    """IPv4 headers with options: well formed, garbage, and lengths that lie."""
    choices = [b"\x01\x01\x01\x00", b"\x00" * 4, b"\x94\x04\x00\x00", b"\x07\x07\x04" + b"\0" * 5]
    for pkt in filter(_is_ipv4, base):
        ihl = (pkt[ETH] & 15) * 4
        for extra in range(4, 41, 4):
            opts = (
                rnd.choice(choices) * (extra // 4) if rnd.random() < 0.5 else rnd.randbytes(extra)
            )
            opts = opts[:extra]
            p = bytearray(pkt[: ETH + ihl] + opts + pkt[ETH + ihl :])
            if ihl + extra > 60:
                continue
            p[ETH] = 0x40 | ((ihl + extra) // 4)
            tot = struct.unpack_from("!H", p, ETH + 2)[0] + extra
            p[ETH + 2 : ETH + 4] = struct.pack("!H", tot)
            _ip_fix(p)
            yield bytes(p)


def fragments(base: list[bytes], rnd: random.Random) -> Iterator[bytes]:
    """First, middle and last fragments, odd offsets, overlapping ids."""
    for pkt in filter(_is_ipv4, base):
        for mf, off in ((1, 0), (1, 1), (1, 3), (0, 1), (0, 185), (1, 8191), (0, 8191)):
            p = bytearray(pkt)
            p[ETH + 4 : ETH + 6] = struct.pack("!H", rnd.choice((7, 7, rnd.randrange(65536))))
            p[ETH + 6 : ETH + 8] = struct.pack("!H", (mf << 13) | off)
            _ip_fix(p)
            yield bytes(p)
            # the fragment's payload cut short of the L4 header
            ihl = (p[ETH] & 15) * 4
            q = bytearray(p[: ETH + ihl + 3])
            q[ETH + 2 : ETH + 4] = struct.pack("!H", ihl + 3)
            _ip_fix(q)
            yield bytes(q)


def tcp_flags(base: list[bytes]) -> Iterator[bytes]:
    """Every TCP flag combination, and data offsets that lie."""
    for pkt in filter(_is_ipv4, base):
        ihl = (pkt[ETH] & 15) * 4
        l4 = ETH + ihl
        if pkt[ETH + 9] != 6 or len(pkt) < l4 + 20:
            continue
        for flags in range(256):
            p = bytearray(pkt)
            p[l4 + 13] = flags
            yield bytes(p)
        for doff in (0, 1, 4, 6, 15):
            p = bytearray(pkt)
            p[l4 + 12] = doff << 4
            yield bytes(p)


def icmp_errors(rnd: random.Random, prog: str) -> Iterator[bytes]:
    """ICMP errors quoting garbage, quoting truncated headers and quoting real
    flows, from the side the program faces."""
    s = _scapy()
    if prog in ("from_container", "to_netdev"):
        outer, wrap = s.IP(src=POD_A.ip, dst=POD_B.ip), from_pod
    elif prog == "to_container":
        outer, wrap = s.IP(src=POD_B.ip, dst=POD_A.ip), to_pod
    else:
        outer, wrap = s.IP(src=OUTSIDE, dst=NODE_IP), from_wire
    real = [
        bytes(s.IP(src=POD_B.ip, dst=POD_A.ip) / s.TCP(sport=8080, dport=40001)),
        bytes(s.IP(src=NODE_IP, dst=OUTSIDE) / s.UDP(sport=40003, dport=53)),
        bytes(s.IP(src=EXT_IP, dst=NODE_IP) / s.TCP(sport=5000, dport=NODE_PORT)),
        bytes(s.IP(src=POD_A.ip, dst=SVC_IP) / s.TCP(sport=40002, dport=SVC_PORT)),
    ]
    for t, c in ((3, 0), (3, 1), (3, 3), (3, 4), (11, 0), (12, 0), (4, 0), (5, 1)):
        for q in real:
            yield wrap(outer / s.ICMP(type=t, code=c) / q[:28])
            for k in (0, 1, 8, 19, 20, 21, 24):
                yield wrap(outer / s.ICMP(type=t, code=c) / q[:k])
        for _ in range(8):
            yield wrap(outer / s.ICMP(type=t, code=c) / rnd.randbytes(rnd.randrange(0, 64)))
        # a quoted header that claims options or a bad IHL
        bad = bytearray(real[0][:28])
        bad[0] = 0x40 | rnd.choice((0, 3, 6, 15))
        yield wrap(outer / s.ICMP(type=t, code=c) / bytes(bad))


def tunnel_inner(rnd: random.Random) -> Iterator[bytes]:
    """VXLAN and IPIP from a real node around bad inner packets."""
    s = _scapy()
    inner = bytes(
        s.Ether() / s.IP(src=REMOTE_POD, dst=POD_A.ip) / s.TCP(sport=80, dport=40004, flags="A")
    )
    mutants = [inner[:k] for k in range(len(inner))] + [rnd.randbytes(40) for _ in range(20)]
    for m in mutants:
        yield from_wire(
            s.IP(src=PEER_NODE, dst=NODE_IP) / s.UDP(sport=40000, dport=8472) / s.VXLAN(vni=400) / m
        )
        yield from_wire(s.IP(src=PEER_NODE, dst=NODE_IP, proto=4) / m[14:])
    # VXLAN header itself short or with odd flags
    for k in range(8):
        yield from_wire(
            s.IP(src=PEER_NODE, dst=NODE_IP) / s.UDP(sport=40000, dport=8472) / bytes(8)[:k]
        )
    for flags in (0, 0x08, 0xFF):
        vx = struct.pack("!B3xI", flags, 400 << 8)
        yield from_wire(s.IP(src=PEER_NODE, dst=NODE_IP) / s.UDP(dport=8472) / vx / inner)
    # from an address that is no node
    yield from_wire(s.IP(src=EXT_IP, dst=NODE_IP, proto=4) / inner[14:])
    yield from_wire(s.IP(src=EXT_IP, dst=NODE_IP) / s.UDP(dport=8472) / s.VXLAN(vni=2) / inner)


def arp(rnd: random.Random, prog: str) -> Iterator[bytes]:
    """ARP with fields that disagree with each other and with the frame."""
    s = _scapy()
    if prog in ("from_container", "to_netdev"):
        mac, ip, target = POD_A.mac, POD_A.ip, GATEWAY
    elif prog == "to_container":
        mac, ip, target = POD_A.node_mac, GATEWAY, POD_A.ip
    else:
        mac, ip, target = EXT_MAC, EXT_IP, NODE_IP
    for op in (0, 1, 2, 3, 255):
        for hwsrc, psrc in (
            (mac, ip),
            ("02:de:ad:be:ef:00", ip),
            (mac, POD_B.ip),
            (mac, "0.0.0.0"),
        ):
            yield bytes(
                s.Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                / s.ARP(op=op, hwsrc=hwsrc, psrc=psrc, pdst=target)
            )
    for hwlen, plen, ptype in ((6, 4, 0x86DD), (4, 4, 0x0800), (6, 16, 0x0800), (0, 0, 0)):
        yield bytes(
            s.Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
            / s.ARP(hwlen=hwlen, plen=plen, ptype=ptype, hwsrc=mac, psrc=ip, pdst=target)
        )
    req = bytes(s.Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / s.ARP(op=1, psrc=ip, pdst=target))
    for k in range(14, len(req)):
        yield req[:k]
    for _ in range(16):
        yield req[:14] + rnd.randbytes(28)


def random_bytes(rnd: random.Random, n: int) -> Iterator[bytes]:
    """Random frames; half with an IPv4 ethertype and version so they get
    past the first checks."""
    for i in range(n):
        p = bytearray(rnd.randbytes(rnd.randrange(14, 160)))
        if i % 2 and len(p) >= 15:
            p[12:14] = b"\x08\x00"
            p[14] = 0x40 | rnd.choice((0, 1, 2, 3, 4))  # bad IHL: malformed for sure
        yield bytes(p)


def bitflips(base: list[bytes], rnd: random.Random, n: int) -> Iterator[bytes]:
    """Valid packets with one to four bytes changed anywhere (fixing the IPv4
    checksum half of the time, so the change reaches the deeper layers)."""
    for _ in range(n):
        p = bytearray(rnd.choice(base))
        for _ in range(rnd.randrange(1, 5)):
            p[rnd.randrange(len(p))] = rnd.randrange(256)
        if rnd.random() < 0.5 and _is_ipv4(bytes(p)):
            _ip_fix(p)
        yield bytes(p)


def corpus(prog: str, total: int, rnd: random.Random) -> list[Batch]:
    """The program's packets, by kind: the structured kinds whole, then
    bit flips and random bytes filling up to `total`."""
    base = bases(prog)
    batches = [
        Batch("truncated", list(truncated(base))),
        Batch("ip_header", list(ip_header(base, rnd))),
        Batch("ip_options", list(ip_options(base, rnd))),
        Batch("fragments", list(fragments(base, rnd))),
        Batch("tcp_flags", list(tcp_flags(base))),
        Batch("icmp_errors", list(icmp_errors(rnd, prog))),
        Batch("arp", list(arp(rnd, prog))),
    ]
    if prog in ("from_netdev", "from_xdp"):
        batches.append(Batch("tunnel_inner", list(tunnel_inner(rnd))))
    used = sum(len(b.packets) for b in batches)
    if used > total:  # a small run: an even share of each kind
        share = max(1, total // len(batches))
        for b in batches:
            b.packets = rnd.sample(b.packets, min(share, len(b.packets)))
        used = sum(len(b.packets) for b in batches)
    rest = max(0, total - used)
    chunk = 5000
    for kind, gen in (("bitflip", bitflips), ("random", None)):
        n = rest // 2 if kind == "bitflip" else rest - rest // 2
        while n > 0:
            m = min(chunk, n)
            pkts = list(gen(base, rnd, m) if gen else random_bytes(rnd, m))
            batches.append(Batch(kind, pkts))
            n -= m
    return batches


# ---------------------------------------------------------------- the run


def fuzz_program(site: Site, prog: str, total: int, rnd: random.Random) -> ProgramResult:
    res = ProgramResult(prog)
    allowed = PROGRAMS[prog][1]
    known = set(reasons())
    with in_netns(site.ns.path):
        ct0, nat0 = site.state_snapshot()
        for batch in corpus(prog, total, rnd):
            counted0, xdp0 = site.counted(), site.xdp_counted()
            ran = redirects = 0
            for pkt in batch.packets:
                ret = site.run(prog, pkt)
                if ret is None:
                    res.refused += 1
                    continue
                ran += 1
                name = allowed.get(ret)
                if name is None:
                    res.failures.append(
                        f"{batch.kind}: return value {ret} is not one {prog} documents "
                        f"(packet {pkt.hex()})"
                    )
                    name = f"unexpected {ret}"
                res.verdicts[name] += 1
                redirects += ret == TC_ACT_REDIRECT and prog == "from_container"
            res.packets += len(batch.packets)
            res.by_kind[batch.kind] += len(batch.packets)
            delta = site.counted()
            delta.subtract(counted0)
            # one verdict per packet; a pod's packet delivered into another
            # pod is counted a second time, as the receiver's ingress
            # (VERDICT_F_LOCAL_PEER, lib/verdict.h)
            peer = sum(n for (r, d), n in delta.items() if d == DIR_INGRESS and r < 128)
            extra = sum(delta.values()) - ran
            if prog != "from_container":
                peer = 0
            if extra != peer or peer > redirects:
                res.failures.append(
                    f"{batch.kind}: the metrics map counted {sum(delta.values())} verdicts for "
                    f"{ran} packets ({peer} pod-to-pod of {redirects} redirects)"
                )
            unknown = {r for (r, _d), n in delta.items() if n and r not in known}
            if unknown:
                res.failures.append(f"{batch.kind}: counted under unknown reasons {unknown}")
            if site.xdp_actions is not None and prog == "from_xdp":
                got = site.xdp_counted() - xdp0
                if got != ran:
                    res.failures.append(f"{batch.kind}: xdp_actions counted {got} for {ran}")
            ct1, nat1 = site.state_snapshot()
            if batch.kind in MALFORMED:
                new_ct = len(set(ct1) - set(ct0))
                new_nat = len(set(nat1) - set(nat0))
                if new_ct or new_nat:
                    res.failures.append(
                        f"{batch.kind}: malformed packets created {new_ct} conntrack and "
                        f"{new_nat} NAT entries"
                    )
            changed = [k for k, v in ct0.items() if ct1.get(k) != v and _bystander_ct(k)]
            changed += [k for k, v in nat0.items() if nat1.get(k) != v]
            if changed:
                res.failures.append(
                    f"{batch.kind}: {len(changed)} bystander conntrack/NAT entries changed"
                )
            site.restore(ct0, nat0)
    return res


def _bystander_ct(key: bytes) -> bool:
    """A conntrack key (struct ct_key: saddr, daddr, sport, dport, ...) of one
    of the bystander flows, in either direction."""
    sport, dport = struct.unpack_from("!HH", key, 8)
    return bool({sport, dport} & set(BYSTANDER_PORTS))


def fuzz(
    programs: list[str],
    packets: int,
    seed: int,
    log: Callable[[str], None],
    site: Site | None = None,
) -> list[ProgramResult]:
    """Fuzz each program with `packets` packets drawn from `seed`, on `site`
    (default: one compiled for the run, removed after it)."""
    rnd = random.Random(seed)
    own = site is None
    site = site or Site(programs)
    try:
        bystanders = {k for k in site.state_snapshot()[0] if _bystander_ct(k)}
        if len(bystanders) < 3:
            raise RuntimeError(f"the bystander flows did not set up ({len(bystanders)} entries)")
        out = []
        for prog in programs:
            t0 = time.monotonic()
            r = fuzz_program(site, prog, packets, random.Random(rnd.getrandbits(64)))
            log(
                f"{prog}: {r.packets} packets in {time.monotonic() - t0:.1f} s, "
                f"{len(r.failures)} failures"
            )
            out.append(r)
        return out
    finally:
        if own:
            site.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=100_000, help="per program (default 100000)")
    ap.add_argument("--seed", type=int, default=None, help="replay a run (printed at start)")
    ap.add_argument("--program", action="append", choices=list(PROGRAMS), help="default: all")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    progs = args.program or list(PROGRAMS)
    print(f"hack/fuzz: seed {seed} (replay with --seed {seed})", file=sys.stderr, flush=True)
    results = fuzz(progs, args.packets, seed, lambda m: print(m, file=sys.stderr, flush=True))
    failed = sum(len(r.failures) for r in results)
    if args.output == "json":
        print(json.dumps({"seed": seed, "programs": [r.to_json() for r in results]}, indent=2))
    else:
        print(f"{'PROGRAM':<16}{'PACKETS':>9}{'REFUSED':>9}{'FAILURES':>10}  VERDICTS")
        for r in results:
            v = ", ".join(f"{k} {n}" for k, n in sorted(r.verdicts.items()))
            print(f"{r.program:<16}{r.packets:>9}{r.refused:>9}{len(r.failures):>10}  {v}")
        for r in results:
            for f in r.failures[:20]:
                print(f"FAIL {r.program}: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
