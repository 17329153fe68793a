"""The words of a trace (daemon/trace.py runs it): each decision in order,
from the trace build's notes and monitor events, the map entries the run
made and the packet that came out."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from porin.daemon.trace_maps import MapMirror
from porin.maps import conntrack, nat
from porin.maps.conntrack import CtEntry, CtKey
from porin.maps.lb_backends import Lb4Backend
from porin.maps.lb_reverse_nat import Lb4ReverseNat
from porin.maps.metrics import direction_name, reasons
from porin.maps.monitor_events import CT_STATUS_NAMES, MonitorEventC
from porin.maps.nat import NatEntry, NatKey
from porin.maps.trace_notes import (
    TRACE_FIB,
    TRACE_LB,
    TRACE_LB_AFFINITY,
    TRACE_LB_FLOW,
    TRACE_REDIR_NEIGH,
    TRACE_REDIR_PEER,
    TRACE_REDIRECT,
    TRACE_TUNNEL_KEY,
    TraceNoteC,
)
from porin.models import Endpoint
from porin.packet_summary import summarize

TC_RETURNS = {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"}
XDP_RETURNS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
FIB_RESULTS = {
    0: "success",
    1: "blackhole",
    2: "unreachable",
    3: "prohibit",
    4: "not forwarded",
    5: "forwarding disabled",
    6: "unsupported",
    7: "no neighbour",
    8: "fragmentation needed",
}
JHASH_INITVAL = 0xDEADBEEF
JHASH_FINAL = ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24))


def _ip(be: int) -> str:
    return socket.inet_ntoa(be.to_bytes(4, "little"))


def _rol(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & 0xFFFFFFFF


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """bpf/lib/hash.h's jhash_3words, for the Maglev slot a flow hashes to."""
    m = 0xFFFFFFFF
    a, b, c = ((x + JHASH_INITVAL + 12 + initval) & m for x in (a, b, c))
    # __jhash_final: x ^= y; x -= rol(y, s), on (a, b, c) by index
    for x, y, s in JHASH_FINAL:
        v = [a, b, c]
        v[x] = ((v[x] ^ v[y]) - _rol(v[y], s)) & m
        a, b, c = v
    return c


def maglev_slot(frame: bytes, table_size: int) -> int | None:
    """The Maglev slot of the frame's flow, as lb4_pick_maglev computes it."""
    ip = frame[14:]
    if len(ip) < 20:
        return None
    ihl = (ip[0] & 0x0F) * 4
    saddr, daddr = (int.from_bytes(ip[o : o + 4], "little") for o in (12, 16))
    l4 = ip[ihl : ihl + 4]
    sport = int.from_bytes(l4[0:2], "little") if len(l4) == 4 else 0
    dport = int.from_bytes(l4[2:4], "little") if len(l4) == 4 else 0
    return jhash_3words(saddr, daddr, (sport << 16) | dport, ip[9]) % table_size


class Explainer:
    def __init__(
        self,
        endpoints: Callable[[], tuple[Endpoint, ...]],
        node_by_ip: Callable[[str], str],
        rule_table: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.node_by_ip = node_by_ip
        self.rule_table = rule_table

    def __call__(self, req: Any, src: dict[str, Any], runs: list[Any], mirror: MapMirror) -> dict:
        eps = self.endpoints()
        by_ifindex = {e.host_ifindex: e for e in eps}
        by_ip = {e.ip: e for e in eps}
        rules = self._rules()
        steps = []
        for run in runs:
            steps.append(self._stage(run, mirror, by_ifindex, by_ip, rules))
        changes = self._changes(mirror)
        if steps and not any(d["kind"] == "service" for st in steps for d in st["decisions"]):
            known = self._existing_flow(changes, mirror, by_ip)
            if known is not None:
                steps[0]["decisions"].insert(0, known)
        text, pkt = summarize(runs[0].frame_in) if runs else ("", {})
        last = steps[-1] if steps else {}
        return {
            "packet": {"summary": text, **pkt},
            "source": src,
            "stages": steps,
            "changes": changes,
            "verdict": last.get("verdict", {}),
        }

    def _existing_flow(
        self, changes: dict[str, list[dict[str, Any]]], mirror: MapMirror, by_ip: dict
    ) -> dict[str, Any] | None:
        """A packet of a service flow conntrack knows: its backend came from
        the flow's entry, not from a choice (no note was written)."""
        for c in changes["conntrack"]:
            if c["change"] != "matched" or not c["backend_id"]:
                continue
            b = self._backend(mirror, c["backend_id"])
            if b is None:
                continue
            raw = mirror.lookup("lb4_reverse_nat", int(c["rev_nat"]).to_bytes(2, "little"))
            fe = Lb4ReverseNat.from_buffer_copy(raw) if raw else None
            frontend = f"{fe.ip}:{fe.host_port}" if fe else f"frontend {c['rev_nat']}"
            where = self._endpoint(by_ip.get(b.ip)) or self.node_by_ip(b.ip)
            return {
                "kind": "service",
                "revNat": c["rev_nat"],
                "frontend": frontend,
                "backendId": b.id,
                "backend": f"{b.ip}:{b.host_port}",
                "how": "existing-flow",
                "text": f"service {frontend}: backend {b.id} {b.ip}:{b.host_port}"
                + (f" ({where})" if where else "")
                + ", the existing flow's (conntrack)",
            }
        return None

    def _rules(self) -> dict[str, Any]:
        if self.rule_table is None:
            return {}
        try:
            return self.rule_table().get("rules", {})
        except Exception:  # policy state being changed: name the rule by id only
            return {}

    def _endpoint(self, ep: Endpoint | None) -> str:
        if ep is None:
            return ""
        from porin.daemon.flows import NAMESPACE_LABEL, POD_LABEL

        ns, pod = ep.labels.get(NAMESPACE_LABEL), ep.labels.get(POD_LABEL)
        name = f"{ns}/{pod}" if ns and pod else ep.container_id[:12]
        return f"endpoint {ep.id} ({name}, {ep.ip})"

    def _stage(self, run: Any, mirror: MapMirror, by_ifindex: dict, by_ip: dict, rules: dict):
        returns = XDP_RETURNS if run.kind == "xdp" else TC_RETURNS
        decisions: list[dict[str, Any]] = []
        for note in run.notes:
            if note.kind == TRACE_LB:
                decisions.append(self._lb(note, run.frame_in, mirror, by_ip))
        verdicts = [ev for ev in run.events if ev.type in (1, 2)]
        for ev in verdicts[:1]:
            decisions.append(
                {
                    "kind": "conntrack",
                    "status": CT_STATUS_NAMES.get(ev.ct_status) or "not looked up",
                    "text": f"conntrack: {CT_STATUS_NAMES.get(ev.ct_status) or 'not looked up'}",
                }
            )
        for ev in run.events:
            if ev.type == 3:  # policy
                decisions.append(self._policy(ev, by_ip, rules))
        nat_d = self._rewrites(run.frame_in, run.frame_out)
        if nat_d:
            decisions.append(nat_d)
        for note in run.notes:
            if note.kind in (TRACE_REDIRECT, TRACE_TUNNEL_KEY, TRACE_FIB):
                decisions.append(self._where(note, by_ifindex))
        records = []
        for ev in verdicts:
            r = reasons().get(ev.reason)
            records.append(
                {
                    "reason": r.name if r else str(ev.reason),
                    "description": r.description if r else "",
                    "dropped": ev.reason >= 128,
                    "direction": direction_name(ev.dir),
                    "endpoint": ev.ep_id,
                    "srcIdentity": ev.src_identity,
                    "dstIdentity": ev.dst_identity,
                    "ctStatus": CT_STATUS_NAMES.get(ev.ct_status, ""),
                }
            )
        final = records[-1] if records else {"reason": "", "dropped": run.ret in (1, 2)}
        verdict = {
            "return": returns.get(run.ret, str(run.ret)),
            "result": "dropped" if final.get("dropped") else "forwarded",
            **final,
        }
        for rec in records:
            decisions.append({"kind": "verdict", **rec, "text": _verdict_text(rec, by_ifindex)})
        out_text, out_pkt = summarize(run.frame_out)
        if out_pkt.get("ipProto") == 4 and len(run.frame_out) > 34:
            inner, _ = summarize(run.frame_out[:14] + run.frame_out[34:])
            out_text += f" carrying {inner}"
        return {
            "program": run.program,
            "device": run.device,
            "ifindex": run.ifindex,
            "decisions": decisions,
            "verdict": verdict,
            "packetOut": {"summary": out_text, **out_pkt},
        }

    def _backend(self, mirror: MapMirror, bid: int) -> Lb4Backend | None:
        slots = mirror.spec("lb4_backends").max_entries
        raw = mirror.lookup("lb4_backends", (bid & (slots - 1)).to_bytes(4, "little"))
        b = Lb4Backend.from_buffer_copy(raw) if raw else None
        return b if b is not None and b.id == bid else None

    def _lb(self, note: TraceNoteC, frame: bytes, mirror: MapMirror, by_ip: dict) -> dict[str, Any]:
        rev_nat, bid, how = note.a, note.b, note.c
        fe_raw = mirror.lookup("lb4_reverse_nat", rev_nat.to_bytes(2, "little"))
        frontend = ""
        if fe_raw is not None:
            fe = Lb4ReverseNat.from_buffer_copy(fe_raw)
            frontend = f"{fe.ip}:{fe.host_port}"
        d: dict[str, Any] = {"kind": "service", "revNat": rev_nat, "frontend": frontend}
        b = self._backend(mirror, bid) if bid else None
        if b is None:
            d.update(backend=None, text=f"service {frontend or rev_nat}: no usable backend")
            return d
        d.update(backendId=bid, backend=f"{b.ip}:{b.host_port}")
        if how == TRACE_LB_AFFINITY:
            d["how"], why = "affinity", "the client's session affinity"
        elif how == TRACE_LB_FLOW:
            d["how"], why = "flow-table", "the NodePort flow table remembers this flow"
        else:
            table = mirror.lookup("lb4_maglev", rev_nat.to_bytes(2, "little"))
            if table is not None:
                size = len(table) // 4
                slot = maglev_slot(frame, size)
                # the slot is named only when it holds the backend the program chose
                if (
                    slot is not None
                    and int.from_bytes(table[slot * 4 : slot * 4 + 4], "little") != bid
                ):
                    slot = None
                d.update(how="maglev", slot=slot, tableSize=size)
                why = f"Maglev slot {slot} of {size}" if slot is not None else "Maglev"
            else:
                d["how"], why = "random", "drawn at random among the active backends"
        where = self._endpoint(by_ip.get(b.ip)) or self.node_by_ip(b.ip)
        d["text"] = (
            f"service {frontend}: backend {bid} {b.ip}:{b.host_port}"
            + (f" ({where})" if where else "")
            + f", by {why}"
        )
        return d

    def _policy(self, ev: MonitorEventC, by_ip: dict, rules: dict) -> dict[str, Any]:
        r = reasons().get(ev.reason) if ev.reason else None
        direction = direction_name(ev.dir)
        rule = rules.get(str(ev.rule_id)) if ev.rule_id else None
        d = {
            "kind": "policy",
            "direction": direction,
            "endpoint": ev.ep_id,
            "allowed": ev.reason == 0,
            "reason": r.name if r else "",
            "ruleId": ev.rule_id,
            "rule": rule,
            "remoteIdentity": ev.src_identity if direction == "ingress" else ev.dst_identity,
        }
        if rule:
            by = f"rule {ev.rule_id}: {rule['kind']} {rule['policy']} {rule.get('section', '')}"
        elif ev.rule_id:
            by = f"rule {ev.rule_id}"
        elif ev.reason == 0:
            by = "no policy isolates it in this direction"
        else:
            by = "no rule allows it (the endpoint is isolated)" if r and r.name == "POLICY" else ""
        verb = "allowed" if ev.reason == 0 else "denied"
        d["text"] = f"policy {direction} of endpoint {ev.ep_id}: {verb}" + (f", {by}" if by else "")
        return d

    def _rewrites(self, before: bytes, after: bytes) -> dict[str, Any] | None:
        _, a = summarize(before)
        _, b = summarize(after)
        if b.get("ipProto") == 4 and len(after) > 34:  # IPIP: compare the inner packet
            _, b = summarize(after[:14] + after[34:])
        parts = []
        for end, addr, port in (("source", "src", "sport"), ("destination", "dst", "dport")):
            if (a.get(addr), a.get(port)) != (b.get(addr), b.get(port)) and b.get(addr):
                old = f"{a.get(addr)}:{a.get(port)}" if port in a else a.get(addr)
                new = f"{b.get(addr)}:{b.get(port)}" if port in b else b.get(addr)
                parts.append((end, old, new))
        if not parts:
            return None
        return {
            "kind": "nat",
            "rewrites": [{"field": e, "from": o, "to": n} for e, o, n in parts],
            "text": "NAT: " + ", ".join(f"{e} {o} -> {n}" for e, o, n in parts),
        }

    def _where(self, note: TraceNoteC, by_ifindex: dict) -> dict[str, Any]:
        if note.kind == TRACE_FIB:
            res = FIB_RESULTS.get(note.a, str(note.a))
            dev = _ifname(note.b)
            return {
                "kind": "fib",
                "destination": _ip(note.c),
                "result": res,
                "device": dev,
                "text": f"route lookup for {_ip(note.c)}: {res}"
                + (f" via {dev}" if note.a == 0 else ""),
            }
        if note.kind == TRACE_TUNNEL_KEY:
            remote = _ip(note.a)
            node = self.node_by_ip(remote)
            return {
                "kind": "tunnel",
                "remote": remote,
                "node": node,
                "vni": note.b,
                "text": f"overlay to {remote}"
                + (f" (node {node})" if node else "")
                + f", VNI {note.b} (source identity)",
            }
        ep = by_ifindex.get(note.a)
        how = {
            TRACE_REDIR_PEER: "into the namespace of",
            TRACE_REDIR_NEIGH: "out of (neighbour by the kernel)",
        }.get(note.b, "out of")
        dev = _ifname(note.a)
        target = f"{dev} -> {self._endpoint(ep)}" if ep else dev
        return {
            "kind": "redirect",
            "ifindex": note.a,
            "device": dev,
            "mode": note.b,
            "endpoint": ep.id if ep else None,
            "text": f"redirect {how} {target}",
        }

    def _changes(self, mirror: MapMirror) -> dict[str, list[dict[str, Any]]]:
        now = conntrack.monotonic_seconds()
        out: dict[str, list[dict[str, Any]]] = {"conntrack": [], "nat": [], "affinity": []}
        added, changed = mirror.changes("ct4_global")
        for k, v in added.items():
            c = conntrack.decode(CtKey.from_buffer_copy(k), CtEntry.from_buffer_copy(v), now)
            out["conntrack"].append({"change": "created", **c.to_json()})
        for k, (old, _new) in changed.items():
            c = conntrack.decode(CtKey.from_buffer_copy(k), CtEntry.from_buffer_copy(old), now)
            out["conntrack"].append({"change": "matched", **c.to_json()})
        if "ct4_confirmed" in mirror.trace:
            added, _ = mirror.changes("ct4_confirmed")
            for k, v in added.items():
                c = conntrack.decode(CtKey.from_buffer_copy(k), CtEntry.from_buffer_copy(v), now)
                out["conntrack"].append({"change": "confirmed", **c.to_json()})
        if "nat4" in mirror.trace:
            added, _ = mirror.changes("nat4")
            for k, v in added.items():
                t = nat.decode(NatKey.from_buffer_copy(k), NatEntry.from_buffer_copy(v), now)
                out["nat"].append({"change": "created", **t.to_json()})
        if "lb4_affinity" in mirror.trace:
            added, changed = mirror.changes("lb4_affinity")
            out["affinity"] = [{"change": "created"} for _ in added] + [
                {"change": "refreshed"} for _ in changed
            ]
        return out


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"ifindex {ifindex}"


def _verdict_text(rec: dict[str, Any], by_ifindex: dict) -> str:
    what = "DROPPED" if rec["dropped"] else "verdict"
    return f"{what}: {rec['reason']} ({rec['description']}), {rec['direction']}" + (
        f" of endpoint {rec['endpoint']}" if rec["endpoint"] else ""
    )
