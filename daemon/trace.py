"""`porin trace`: what this node's datapath would do with one packet.

How (bpf/lib/trace.h has the datapath's half):
  1. The trace build: the entry files this node runs, compiled a second
     time with -DPORIN_TRACE and their maps pinned under <bpffsRoot>/trace,
     built on the first trace (about 20 s here) and kept pinned, so later
     traces and restarts reuse it.
  2. Before each trace, every trace map is made a copy of the live map of
     the same name (daemon/trace_maps.py); counters start from zero.
  3. The packet is built (daemon/trace_packet.py) and run with
     BPF_PROG_TEST_RUN through the program where it would enter: a pod's
     packet through from_container on its host veth, an outside packet
     through from_xdp (when XDP runs on the device) and then from_netdev on
     the uplink. The run's context names the real device, so the programs
     see the interface they would.
  4. The answer comes from what the programs did to the copies: the notes
     of the trace build (backend chosen and how, redirects, tunnel key, FIB
     lookups), the trace build's monitor events (policy decisions with
     their rule, the verdict with conntrack status and identities), the
     conntrack, NAT and affinity entries the run created or changed, and
     the packet as it came out (daemon/trace_explain.py words it).

Nothing live changes: the programs that ran are not the attached ones and
their maps are copies. Traces run one at a time.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from porin.daemon.compiler import load_trace_programs, trace_config
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import DatapathError, Program
from porin.daemon.flows import NAMESPACE_LABEL, POD_LABEL
from porin.daemon.map_specs import map_specs
from porin.daemon.trace_maps import MapMirror
from porin.daemon.trace_packet import PROTOCOLS, TraceInputError, TracePacket
from porin.errors import PorinError
from porin.maps import syscall
from porin.maps.monitor_events import MonitorEventC, RingBuffer
from porin.maps.trace_notes import TraceNoteC, TraceNotesRing
from porin.models import Endpoint

log = logging.getLogger(__name__)

SK_BUFF_SIZE = 192  # struct __sk_buff
SKB_IFINDEX_OFF = 40
XDP_PASS = 2
DEFAULT_SOURCE_PORT = 45678
REQUEST_FIELDS = {"from", "to", "port", "protocol", "flags", "sourcePort", "device"}


class TraceSourceUnknown(PorinError, LookupError):
    http_status = 404


@dataclass(frozen=True)
class TraceRequest:
    source: str  # NAMESPACE/POD, an endpoint id, or an IPv4 address
    destination: str
    port: int
    protocol: str
    flags: str = "S"
    source_port: int = DEFAULT_SOURCE_PORT
    device: str = ""  # the uplink an outside packet enters by (default: the first)

    @classmethod
    def from_json(cls, body: Any) -> TraceRequest:
        if not isinstance(body, dict):
            raise TraceInputError("the trace request must be a JSON object")
        unknown = sorted(set(body) - REQUEST_FIELDS)
        if unknown:
            raise TraceInputError(
                f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(REQUEST_FIELDS))}"
            )
        for k in ("from", "to"):
            if not isinstance(body.get(k), str) or not body[k]:
                raise TraceInputError(f"{k!r} is required (a string)")
        proto = str(body.get("protocol", "tcp")).lower()
        if proto not in PROTOCOLS:
            raise TraceInputError(f"protocol {proto!r}: use tcp, udp or icmp")
        ints = {}
        for k, default in (("port", 0), ("sourcePort", DEFAULT_SOURCE_PORT)):
            v = body.get(k, default)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 65536:
                raise TraceInputError(f"{k!r} must be a port number (0-65535), not {v!r}")
            ints[k] = v
        if proto != "icmp" and not ints["port"]:
            raise TraceInputError(f"a {proto} trace needs a destination port")
        return cls(
            source=body["from"],
            destination=body["to"],
            port=ints["port"],
            protocol=proto,
            flags=str(body.get("flags", "S")),
            source_port=ints["sourcePort"] or DEFAULT_SOURCE_PORT,
            device=str(body.get("device", "")),
        )


@dataclass(frozen=True)
class Uplink:
    name: str
    ifindex: int
    mac: str
    xdp: bool  # the XDP program runs on it


@dataclass
class StageRun:
    program: str
    device: str
    ifindex: int
    kind: str  # tc, xdp
    ret: int
    frame_in: bytes
    frame_out: bytes
    notes: list[TraceNoteC]
    events: list[MonitorEventC]


class Tracer:
    def __init__(
        self,
        cfg: AgentConfig,
        endpoints: Callable[[], tuple[Endpoint, ...]],
        uplinks: Callable[[], list[Uplink]],
        explain: Callable[[TraceRequest, dict[str, Any], list[StageRun], MapMirror], dict],
    ) -> None:
        self.cfg = cfg
        self.endpoints = endpoints
        self.uplinks = uplinks
        self.explain = explain
        self._lock = threading.Lock()
        self._progs: dict[str, Program] | None = None
        self._mirror: MapMirror | None = None
        self._notes: TraceNotesRing | None = None
        self._monitor: RingBuffer | None = None

    def close(self) -> None:
        with self._lock:
            for r in (self._notes, self._monitor):
                if r is not None:
                    r.close()
            if self._mirror is not None:
                self._mirror.close()
            for p in (self._progs or {}).values():
                os.close(p.fd)
            self._notes = self._monitor = self._mirror = None
            self._progs = None

    def _ready(self) -> tuple[dict[str, Program], MapMirror, TraceNotesRing, RingBuffer]:
        if self._progs is None:
            started = time.monotonic()
            try:
                progs = load_trace_programs(self.cfg)
            except DatapathError as e:
                raise PorinError(f"the trace build cannot be made: {e}", http_status=500) from e
            root = trace_config(self.cfg).bpffs_root
            mirror = MapMirror(map_specs(self.cfg), self.cfg.bpffs_root, root)
            try:
                notes = TraceNotesRing(root)
                try:
                    monitor = RingBuffer(root)
                except BaseException:
                    notes.close()
                    raise
            except BaseException:
                mirror.close()
                raise
            # all or nothing: a failed start leaves the next trace to try again
            self._mirror, self._notes, self._monitor = mirror, notes, monitor
            self._progs = progs
            log.info("trace build ready in %.1fs", time.monotonic() - started)
        assert self._mirror and self._notes and self._monitor
        return self._progs, self._mirror, self._notes, self._monitor

    def trace(self, req: TraceRequest) -> dict[str, Any]:
        src, stages, pkt = self._plan(req)
        with self._lock:
            progs, mirror, notes, monitor = self._ready()
            started = time.monotonic()
            mirror.sync()
            copied = time.monotonic() - started
            notes.skip_pending()
            monitor.skip_pending()
            runs: list[StageRun] = []
            frame = pkt.frame()
            for program, dev, kind in stages:
                if program not in progs:
                    break  # this node does not run it (no XDP on the device)
                run = self._run(progs[program], program, dev, kind, frame, notes, monitor)
                runs.append(run)
                if kind == "xdp" and run.ret == XDP_PASS:
                    frame = run.frame_out
                    continue
                break
            out = self.explain(req, src, runs, mirror)
            out["timing"] = {"copyMs": round(copied * 1000, 1)}
            return out

    def _run(
        self,
        prog: Program,
        name: str,
        dev: Uplink,
        kind: str,
        frame: bytes,
        notes: TraceNotesRing,
        monitor: RingBuffer,
    ) -> StageRun:
        if kind == "xdp":
            ctx = struct.pack("<6I", 0, len(frame), 0, dev.ifindex, 0, 0)  # struct xdp_md
        else:
            buf = bytearray(SK_BUFF_SIZE)
            struct.pack_into("<I", buf, SKB_IFINDEX_OFF, dev.ifindex)
            ctx = bytes(buf)
        try:
            ret, out, _duration, _ctx = syscall.prog_test_run_ctx(prog.fd, frame, ctx)
        except syscall.BpfError as e:
            raise PorinError(f"running {name} on {dev.name} failed: {e}", http_status=500) from e
        return StageRun(
            program=name,
            device=dev.name,
            ifindex=dev.ifindex,
            kind=kind,
            ret=ret,
            frame_in=frame,
            frame_out=out,
            notes=notes.notes(),
            events=monitor.events(),
        )

    def _plan(
        self, req: TraceRequest
    ) -> tuple[dict[str, Any], list[tuple[str, Uplink, str]], TracePacket]:
        """Where the packet enters and from whom: (source, stages, packet)."""
        eps = self.endpoints()
        ep = find_endpoint(eps, req.source)
        base = dict(
            dst=req.destination,
            proto=req.protocol,
            sport=req.source_port,
            dport=req.port,
            flags=req.flags,
        )
        if ep is not None:
            pkt = TracePacket(src=ep.ip, src_mac=ep.mac, dst_mac=ep.host_mac, **base)
            veth = Uplink(ep.host_ifname, ep.host_ifindex, ep.host_mac, False)
            src = {"kind": "endpoint", "endpoint": ep.id, "ip": ep.ip, "device": ep.host_ifname}
            src.update(_names(ep))
            return src, [("from_container", veth, "tc")], pkt
        if "/" in req.source or not _is_ipv4(req.source):
            raise TraceSourceUnknown(
                f"no local pod {req.source!r}: give NAMESPACE/POD or an endpoint id of this "
                "node, or an IPv4 address for a packet from outside"
            )
        ups = self.uplinks()
        if not ups:
            raise PorinError(
                "this node has no uplink devices (config devices): a packet from outside "
                "cannot enter",
                http_status=409,
            )
        up = ups[0]
        if req.device:
            named = [u for u in ups if u.name == req.device]
            if not named:
                raise TraceInputError(
                    f"device {req.device!r} is not one of this node's devices "
                    f"({', '.join(u.name for u in ups)})"
                )
            up = named[0]
        pkt = TracePacket(src=req.source, dst_mac=up.mac, src_mac="02:7a:11:00:00:01", **base)
        src = {"kind": "outside", "ip": req.source, "device": up.name}
        stages = [("from_xdp", up, "xdp")] if up.xdp else []
        return src, [*stages, ("from_netdev", up, "tc")], pkt


def find_endpoint(eps: tuple[Endpoint, ...], ref: str) -> Endpoint | None:
    """The local endpoint `ref` names: NAMESPACE/POD, its id, or its IP."""
    if ref.isdigit():
        return next((e for e in eps if e.id == int(ref)), None)
    if "/" in ref:
        ns, _, name = ref.partition("/")
        return next(
            (
                e
                for e in eps
                if e.labels.get(NAMESPACE_LABEL) == ns and e.labels.get(POD_LABEL) == name
            ),
            None,
        )
    return next((e for e in eps if e.ip == ref), None)


def _names(ep: Endpoint) -> dict[str, str]:
    out = {}
    if NAMESPACE_LABEL in ep.labels:
        out["namespace"] = ep.labels[NAMESPACE_LABEL]
    if POD_LABEL in ep.labels:
        out["pod"] = ep.labels[POD_LABEL]
    return out


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)
