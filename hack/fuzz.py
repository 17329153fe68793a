#!/usr/bin/env python3
"""Hostile packets through every entry program, with BPF_PROG_TEST_RUN.

    hack/fuzz [--packets N] [--seed S] [--program NAME ...] [--api [--no-packets]] [-o json]

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
  under a reason bpf/lib/reasons.h names (and xdp_metrics one action);
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fuzz_packets import (
    BYSTANDER_PORTS,
    MALFORMED,
    NODE_IP,
    NODE_PORT,
    PEER_MAC,
    PEER_NODE,
    POD_A,
    POD_B,
    REMOTE_NODE_PORT,
    REMOTE_POD,
    SVC_IP,
    SVC_PORT,
    Batch,
    bystander_packets,
    corpus,
    from_pod,
    nodeport_flows,
)
from porinlab import Netns, in_netns

from porin.daemon.config import AgentConfig
from porin.daemon.datapath import compile_programs
from porin.daemon.services import LbMaps, NodeContext, ServiceManager
from porin.maps import syscall
from porin.maps.conntrack_tables import Conntrack
from porin.maps.endpoints import EndpointsMap
from porin.maps.host_devices import HostDevice, sync_host_devices
from porin.maps.ipcache import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IpcacheEntry, IpcacheMap
from porin.maps.metrics import MetricsMap, reasons
from porin.maps.nat import NatMap
from porin.maps.nonmasq import NonMasqMap
from porin.maps.tunnel_config import TunnelConfig, TunnelConfigMap
from porin.maps.xdp_metrics import XdpMetricsMap
from porin.models import Backend, Service

__all__ = ["Batch", "POD_A", "POD_B", "BYSTANDER_PORTS", "corpus", "from_pod", "fuzz", "Site"]

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
    (so FIB lookups see only the node network made here)."""

    def __init__(
        self, programs: list[str], root: str | None = None, fds: dict[str, int] | None = None
    ) -> None:
        """Compile `programs` into a private root, or (with `root` and `fds`)
        fuzz programs already loaded over the maps pinned there."""
        self.owned = root is None
        self.root = root or f"/sys/fs/bpf/plfuzz-{uuid.uuid4().hex[:8]}"
        self.state = tempfile.mkdtemp(prefix="plfuzz-")
        self.ns = Netns(kind="fuzz")
        # the node network, with the other node's neighbour: the XDP balancer's
        # FIB lookups find the way there, so its encapsulations are fuzzed too
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],  # as the agent sets it
            ["ip", "link", "add", "node0", "type", "veth", "peer", "name", "node0p"],
            ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "node0"],
            ["ip", "link", "set", "node0p", "up"],
            ["ip", "link", "set", "node0", "up"],
            [
                "ip",
                "neigh",
                "add",
                PEER_NODE,
                "lladdr",
                PEER_MAC,
                "dev",
                "node0",
                "nud",
                "permanent",
            ],
        ):
            self.ns.exec(cmd)
        self.modules: list[Any] = []
        self.fds: dict[str, int] = dict(fds or {})
        try:
            if self.owned:
                self._compile(programs)
            self.metrics = MetricsMap(self.root)
            self.ct = Conntrack(self.root)
            self.nat = NatMap(self.root)
            self.xdp_metrics = XdpMetricsMap(self.root) if "from_xdp" in self.fds else None
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
        for sid, proto in ((3, "tcp"), (4, "udp")):
            svcs.upsert(
                Service(id=sid, ip=f"10.96.0.{10 + sid}", port=SVC_PORT, protocol=proto,
                        type="nodeport", node_port=REMOTE_NODE_PORT,
                        backends=[Backend(REMOTE_POD, 8080)])
            )  # fmt: skip
        # the bystanders: established before the fuzzing, untouched by it
        with in_netns(self.ns.path):
            for prog, pkt in bystander_packets():
                if prog in self.fds:
                    syscall.prog_test_run(self.fds[prog], pkt)
            # the NodePort flows of the corpus's own packets, made by tc, so
            # that nodePortMode snat's XDP finds them established (and sends
            # their mutants on into the overlay)
            if "from_netdev" in self.fds:
                for pkt in nodeport_flows():
                    syscall.prog_test_run(self.fds["from_netdev"], pkt)

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
        return sum(self.xdp_metrics.totals().values()) if self.xdp_metrics else 0

    def state_snapshot(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Both conntrack tables (keys prefixed by the table's index) and NAT."""
        ct = {
            bytes([i]) + k: v
            for i, t in enumerate(self.ct.tables)
            for k, v in _raw_items(t).items()
        }
        return ct, _raw_items(self.nat)

    def restore(self, ct: dict[bytes, bytes], nat: dict[bytes, bytes]) -> None:
        """Remove what a batch created, so the next one meets the same maps."""
        now_ct, now_nat = self.state_snapshot()
        for i, table in enumerate(self.ct.tables):
            extra = [k[1:] for k in now_ct if k[0] == i and k not in ct]
            if extra:
                table.delete_packed(b"".join(extra), len(extra))
        extra = [k for k in now_nat if k not in nat]
        if extra:
            self.nat.delete_packed(b"".join(extra), len(extra))

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
            if site.xdp_metrics is not None and prog == "from_xdp":
                got = site.xdp_counted() - xdp0
                if got != ran:
                    res.failures.append(f"{batch.kind}: xdp_metrics counted {got} for {ran}")
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
    """A snapshot's conntrack key (the table's index, then struct ct4_key:
    saddr, daddr, sport, dport, ...) of one of the bystander flows, either way."""
    sport, dport = struct.unpack_from("!HH", key, 9)
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
    ap.add_argument("--api", action="store_true", help="hostile API clients (hack/fuzz_api.py)")
    ap.add_argument("--no-packets", action="store_true", help="with --api: the API only")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    progs = [] if args.no_packets else (args.program or list(PROGRAMS))
    print(f"hack/fuzz: seed {seed} (replay with --seed {seed})", file=sys.stderr, flush=True)

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    results = fuzz(progs, args.packets, seed, log) if progs else []
    api = None
    if args.api:
        import fuzz_api

        api = fuzz_api.standalone(seed, log)
    failed = sum(len(r.failures) for r in results) + (len(api.failures) if api else 0)
    if args.output == "json":
        out: dict[str, Any] = {"seed": seed, "programs": [r.to_json() for r in results]}
        if api:
            out["api"] = api.to_json()
        print(json.dumps(out, indent=2))
        return 1 if failed else 0
    if results:
        print(f"{'PROGRAM':<16}{'PACKETS':>9}{'REFUSED':>9}{'FAILURES':>10}  VERDICTS")
    for r in results:
        v = ", ".join(f"{k} {n}" for k, n in sorted(r.verdicts.items()))
        print(f"{r.program:<16}{r.packets:>9}{r.refused:>9}{len(r.failures):>10}  {v}")
    for r in results:
        for f in r.failures[:20]:
            print(f"FAIL {r.program}: {f}")
    if api:
        kinds = ", ".join(
            f"{k} {n}" for k, n in sorted(api.by_kind.items()) if "concurrent" not in k
        )
        print(f"API: {api.requests} hostile requests ({kinds}); statuses {dict(api.statuses)}")
        print(
            f"API: {api.cni_ops} CNI calls alongside, slowest {api.cni_slowest:.2f} s; "
            f"agent fds {api.fds_before} before, {api.fds_after} after"
        )
        for f in api.failures[:40]:
            print(f"FAIL api: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
