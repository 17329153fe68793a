"""The flow log: who talked to whom on this node, and what became of it.

The datapath writes flow events (bpf/lib/flowlog.h: drops, connections'
first packets and first replies) into the `flow_events` ring while
`flow_config.enabled` is set. A thread here reads the ring, turns each
event into a flow (the packet's addresses and ports, the verdict, the
policy rule) and adds what the datapath does not know: the local
endpoint's id, namespace, pod name and labels, the remote end's identity,
labels and node from the ipcache and kvstore, the service a connection was
balanced through. The last `flowBufferSize` flows are kept in memory.

Capture (`flowCapture`): `always`; `on-demand` (the default), on while an
observer follows and for `flowCaptureLinger` seconds after the last
`porin observe`, so that a node nobody looks at pays one array lookup per
packet and nothing else; or `off`.

Flows the datapath could not write are counted (ring full, over the
per-CPU budget `flowRateLimit`) and every answer says how many were missed
since capture began.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from porin.daemon.controllers import Controller
from porin.daemon.flow_filter import FlowFilter
from porin.maps.flow_config import FlowConfigMap
from porin.maps.flow_events import FLOW_DROP, FLOW_REPLY, FlowEventC, FlowRing
from porin.maps.flow_lost import FlowLostMap
from porin.maps.ipcache import RESERVED_IDENTITIES
from porin.maps.metrics import direction_name, reasons
from porin.models import Endpoint
from porin.packet_summary import summarize

log = logging.getLogger("porin.flows")

CAPTURE_MODES = ("on-demand", "always", "off")
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
POD_LABEL = "k8s:io.kubernetes.pod.name"
# verdicts that rewrote an address: the flow was translated
TRANSLATING = {"MASQUERADED", "REV_SNAT", "NODEPORT", "NODEPORT_DSR", "NODEPORT_SNAT", "DSR_REPLY"}
EVENT_NAMES = {1: "new", 2: "reply", 3: "drop"}


class Enricher:
    """What the agent knows about an address, for both ends of a flow."""

    def __init__(
        self,
        endpoints: Callable[[], tuple[Endpoint, ...]],
        remote: Callable[[], dict[str, dict[str, Any]]],
        frontend: Callable[[int], str],
    ) -> None:
        self.endpoints = endpoints  # local endpoints (a lock-free snapshot)
        self.remote = remote  # ip -> {identity, node, labels, ...} from the kvstore
        self.frontend = frontend  # rev_nat id -> "VIP:port"

    def end(self, ip: str, identity: int, local: dict[str, Endpoint]) -> dict[str, Any]:
        out: dict[str, Any] = {"ip": ip, "identity": identity}
        ep = local.get(ip)
        if ep is not None:
            out.update(endpoint_id=ep.id, labels=dict(ep.labels), identity=ep.identity)
            _names(out, ep.labels)
            return out
        r = self.remote().get(ip)
        if r is not None:
            out["identity"] = int(r.get("identity", identity))
            out["node"] = r.get("node", "")
            labels = r.get("labels") or {}
            if labels:
                out["labels"] = dict(labels)
                _names(out, labels)
            return out
        if identity in RESERVED_IDENTITIES:
            out["labels"] = {RESERVED_IDENTITIES[identity]: ""}
        return out


def _names(out: dict[str, Any], labels: dict[str, str]) -> None:
    if NAMESPACE_LABEL in labels:
        out["namespace"] = labels[NAMESPACE_LABEL]
    if POD_LABEL in labels:
        out["pod_name"] = labels[POD_LABEL]


def decode(ev: FlowEventC, node: str, wall_offset: float, enricher: Enricher) -> dict[str, Any]:
    """One flow from one datapath event: stable field names (`porin observe -o json`)."""
    _text, pkt = summarize(ev.packet)
    r = reasons().get(ev.reason)
    reason = r.name if r else str(ev.reason)
    dropped = ev.type == FLOW_DROP
    if dropped:
        verdict = "dropped"
    elif reason in TRANSLATING or ev.rev_nat:
        verdict = "translated"
    else:
        verdict = "forwarded"
    local = {e.ip: e for e in enricher.endpoints()}
    src, dst = pkt.get("src", ""), pkt.get("dst", "")
    l4: dict[str, Any] = {"protocol": pkt.get("proto", "")}
    if "sport" in pkt:
        l4.update(source_port=pkt["sport"], destination_port=pkt["dport"])
    if "tcpFlags" in pkt:
        l4["flags"] = pkt["tcpFlags"]
    if "icmpType" in pkt:
        l4.update(icmp_type=pkt["icmpType"], icmp_code=pkt.get("icmpCode", 0))
    unix = ev.ktime_ns / 1e9 + wall_offset
    flow: dict[str, Any] = {
        "time": datetime.fromtimestamp(unix, UTC).isoformat(timespec="microseconds"),
        "unixTime": round(unix, 6),
        "node": node,
        "event": EVENT_NAMES.get(ev.type, str(ev.type)),
        "verdict": verdict,
        "reason": reason,
        "drop_reason": reason if dropped else None,
        "traffic_direction": direction_name(ev.dir),
        "is_reply": ev.type == FLOW_REPLY,
        "source": enricher.end(src, ev.src_identity, local),
        "destination": enricher.end(dst, ev.dst_identity, local),
        "l4": l4,
        "length": ev.len,
        "ifindex": ev.ifindex,
    }
    # the local endpoint the packet was judged for: the datapath's, or the pod
    # behind the interface (a forged source is dropped before its endpoint is known)
    ep = next((e for e in local.values() if e.id == ev.ep_id), None) if ev.ep_id else None
    if ep is None:
        ep = next((e for e in local.values() if e.host_ifindex == ev.ifindex), None)
    if ep is not None:
        flow["endpoint_id"] = ep.id
        ns, pod = ep.labels.get(NAMESPACE_LABEL), ep.labels.get(POD_LABEL)
        if ns and pod:
            flow["endpoint"] = f"{ns}/{pod}"
    if ev.policy:
        flow["policy"] = {
            "ingress": bool(ev.policy & 1),
            "egress": bool(ev.policy & 2),
            "rule_id": ev.rule_id,
        }
    if ev.rev_nat:
        flow["service"] = enricher.frontend(ev.rev_nat)
    return flow


class FlowLog:
    def __init__(
        self,
        bpffs_root: str,
        node: str,
        enricher: Enricher,
        size: int = 4096,
        capture: str = "on-demand",
        linger: float = 300.0,
        rate: int = 0,
    ) -> None:
        self.node = node
        self.enricher = enricher
        self.capture = capture
        self.linger = linger
        self.rate = rate
        self.flows: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.recorded = 0  # flows taken from the ring since the agent started
        self.enabled = False
        self.enabled_since = 0.0
        self._config = FlowConfigMap(bpffs_root)
        self._lost = FlowLostMap(bpffs_root)
        self._ring = FlowRing(bpffs_root)
        self._lost_base = {"ringFull": 0, "rateLimited": 0}
        self._followers = 0
        self._last_query = float("-inf")
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.controller = Controller("flow-log")

    # ---------- capture switch ----------

    def _want(self) -> bool:
        if self.capture == "always":
            return True
        if self.capture == "off":
            return False
        return self._followers > 0 or time.monotonic() - self._last_query < self.linger

    def _switch(self) -> None:
        want = self._want()
        if want == self.enabled:
            return
        if want:
            self._ring.skip_pending()  # events from an earlier capture are stale
            self._lost_base = self._lost.totals()
            self.enabled_since = time.time()
        self._config.set(want, self.rate)
        self.enabled = want
        log.info("flow capture %s", "on" if want else "off")

    def touch(self) -> None:
        """A `porin observe` asked: capture on (on-demand) for the linger time."""
        with self._cond:
            self._last_query = time.monotonic()
            self._switch()

    # ---------- the reader ----------

    def start(self) -> None:
        with self._cond:
            self._switch()
        self._thread = threading.Thread(target=self._loop, name="flows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._config.set(False, self.rate)
        except OSError:
            pass
        for m in (self._config, self._lost, self._ring):
            m.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._ring.wait(0.5)
                with self.controller.run():
                    self.read_once()
                    with self._cond:
                        self._switch()
            except Exception:
                log.exception("flow log reader failed")
                self._stop.wait(1.0)

    def read_once(self) -> int:
        events = self._ring.flow_events()
        if not events:
            return 0
        offset = time.time() - time.monotonic()
        new = [decode(ev, self.node, offset, self.enricher) for ev in events]
        with self._cond:
            self.flows.extend(new)
            self.recorded += len(new)
            self._cond.notify_all()
        return len(new)

    # ---------- queries ----------

    def lost(self) -> dict[str, int]:
        """Flows the datapath could not report since capture went on."""
        now = self._lost.totals()
        return {k: max(0, now[k] - self._lost_base.get(k, 0)) for k in now}

    def status(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "enabled": self.enabled,
            "enabledSince": self.enabled_since if self.enabled else None,
            "kept": len(self.flows),
            "bufferSize": self.flows.maxlen,
            "recorded": self.recorded,
            "lost": self.lost(),
        }

    def query(self, f: FlowFilter) -> dict[str, Any]:
        was_on = self.enabled
        if not f.peek:
            self.touch()
        with self._cond:
            flows = list(self.flows)
        out = [fl for fl in flows if f.matches(fl)]
        if f.last is not None:
            out = out[-f.last :]
        # captureStarted: capture was off until this query (on-demand, idle node)
        return {**self.status(), "captureStarted": self.enabled and not was_on, "flows": out}

    def follow(self, f: FlowFilter, idle: float = 1.0) -> Iterator[dict[str, Any]]:
        """The matching flows as they come (first the newest `last`), and
        a {"lost": ...} line whenever the count of missed flows moves;
        an empty dict every `idle` seconds without one, so a gone client is noticed."""
        with self._cond:
            self._followers += 1
            self._switch()
            backlog = [fl for fl in self.flows if f.matches(fl)]
            seen = self.recorded
        try:
            yield from backlog[-f.last :] if f.last is not None else backlog
            lost = self.lost()
            yield {"lost": lost}
            while not self._stop.is_set():
                with self._cond:
                    self._cond.wait_for(lambda s=seen: self.recorded != s, timeout=idle)
                    fresh = self.recorded - seen
                    batch = list(self.flows)[-fresh:] if fresh else []
                    seen = self.recorded
                for fl in batch:
                    if f.matches(fl):
                        yield fl
                now = self.lost()
                if now != lost:
                    lost = now
                    yield {"lost": lost}
                elif not batch:
                    yield {}
        finally:
            with self._cond:
                self._followers -= 1
                self._last_query = time.monotonic()
                self._switch()
