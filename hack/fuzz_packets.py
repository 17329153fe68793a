"""The packets of hack/fuzz: valid packets of each entry program's own
paths, and their mutations by kind (each a generator, drawn from one seeded
random.Random so that a run can be replayed)."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from porin.daemon.trace_packet import inet_csum
from porin.maps.endpoints import EndpointEntry

NODE_IP, PEER_NODE, EXT_IP, OUTSIDE = "198.18.0.11", "198.18.0.12", "198.18.0.100", "203.0.113.7"
NODE_MAC, EXT_MAC, PEER_MAC = "02:aa:00:00:00:01", "02:ee:00:00:00:64", "02:aa:00:00:00:12"
REMOTE_POD, GATEWAY = "10.244.2.5", "10.244.0.1"
SVC_IP, SVC_PORT, NODE_PORT = "10.96.0.10", 80, 30080
REMOTE_NODE_PORT = 30081  # a NodePort whose one backend is on another node
POD_A = EndpointEntry("10.244.0.10", 1, 10, "02:00:00:00:00:0a", "02:aa:00:00:00:0a", identity=300)
POD_B = EndpointEntry("10.244.0.11", 77, 11, "02:00:00:00:00:0b", "02:aa:00:00:00:0b", identity=301)
BYSTANDER_PORTS = (50000, 50001, 50002)  # source ports no packet of the corpus uses

# kinds whose packets are malformed: they must leave no conntrack or NAT entry
MALFORMED = ("random", "truncated", "ip_header")


@dataclass
class Batch:
    kind: str
    packets: list[bytes]


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


def nodeport_flows() -> list[bytes]:
    """The first packets of the flows to REMOTE_NODE_PORT that bases() mutates
    for from_netdev and from_xdp (TCP and UDP from the external host)."""
    s = _scapy()
    ext = s.IP(src=EXT_IP, dst=NODE_IP)
    return [
        from_wire(ext / s.TCP(sport=5010, dport=REMOTE_NODE_PORT, flags="S")),
        from_wire(ext / s.UDP(sport=5011, dport=REMOTE_NODE_PORT) / b"u"),
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
            # established by nodeport_flows(): nodePortMode snat's XDP sends them on
            from_wire(
                s.IP(src=EXT_IP, dst=NODE_IP)
                / s.TCP(sport=5010, dport=REMOTE_NODE_PORT, flags="A")
                / (b"t" * 16)
            ),
            from_wire(
                s.IP(src=EXT_IP, dst=NODE_IP) / s.UDP(sport=5011, dport=REMOTE_NODE_PORT) / b"u"
            ),
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
    pkt[off + 10 : off + 12] = struct.pack("!H", inet_csum(bytes(pkt[off : off + ihl])))


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
