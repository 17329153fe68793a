"""`porin monitor`: the datapath's verdicts as they happen.

By default every drop, with its named reason; `--type trace` adds every
other verdict (forwarded, to the stack, masqueraded, ...);
`--type policy-verdict` shows the network-policy decision of each new
connection (ALLOWED or DENIED, and the policy rule that decided, or "default
deny" and the policies isolating the endpoint); `--type all` everything.
Policy drops carry the deciding rule too. Events come from the datapath's
ring buffer (bpf/lib/monitor.h), which only fills while a monitor listens;
one monitor at a time per node.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click

from porin.cli.context import Context, fail
from porin.cli.output import output_option
from porin.maps.monitor_config import (
    MONITOR_F_DROPS,
    MONITOR_F_POLICY,
    MONITOR_F_TRACE,
    lock_path,
)
from porin.maps.monitor_events import MonitorEventC
from porin.maps.pinned import MapNotFound
from porin.packet_summary import summarize


@contextlib.contextmanager
def _exclusive(bpffs_root: str) -> Iterator[None]:
    """One monitor per node: a ring buffer has a single read position. The
    lock file goes when the monitor does. (The agent takes the lock shared for
    an instant when it checks for monitors killed before they could clean up:
    try again for a moment.)"""
    path = lock_path(bpffs_root)
    deadline = time.monotonic() + 1.0
    while True:
        f = open(path, "a+")  # held, and locked, for the monitor's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            if time.monotonic() > deadline:
                fail(f"another porin monitor is reading this node's events (pid {holder})")
            time.sleep(0.05)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # its last holder removed it meanwhile: lock the new one
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        os.unlink(path)
        f.close()


def _ifname(ifindex: int, cache: dict[int, str]) -> str:
    if ifindex not in cache:
        try:
            cache[ifindex] = socket.if_indextoname(ifindex)
        except OSError:
            cache[ifindex] = f"if{ifindex}"
    return cache[ifindex]


class Attribution:
    """Rule ids and identities resolved through the agent (ids alone without it)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.table: dict[str, Any] = {"rules": {}, "selectedBy": {}, "cidrIdentities": {}}
        self.identities: dict[int, dict[str, str]] = {}
        self.refresh()

    def refresh(self) -> None:
        try:
            client = self.ctx.client()
            self.table = client.request("GET", "/v1/policies/rules")  # type: ignore[assignment]
            self.identities = {
                i["id"]: i["labels"]
                for i in client.request("GET", "/v1/identities")  # type: ignore[union-attr]
            }
        except Exception:
            pass

    def rule(self, rule_id: int) -> dict[str, Any] | None:
        r = self.table["rules"].get(str(rule_id))
        if r is None and rule_id:
            self.refresh()
            r = self.table["rules"].get(str(rule_id))
        return r

    def labels(self, identity: int) -> str:
        cidr = self.table.get("cidrIdentities", {}).get(str(identity))
        if cidr:
            return f"cidr:{cidr}"
        if identity not in self.identities:
            self.refresh()
        labels = self.identities.get(identity, {})
        return ",".join(f"{k}={v}" if v else k for k, v in sorted(labels.items()))

    def policy_fields(self, ev: MonitorEventC, direction: str) -> dict[str, Any]:
        remote = ev.src_identity if direction == "ingress" else ev.dst_identity
        out: dict[str, Any] = {
            "ruleId": ev.rule_id,
            "remoteIdentity": remote,
            "remoteLabels": self.labels(remote) if remote else "",
        }
        if ev.rule_id:
            r = self.rule(ev.rule_id)
            out["policy"] = r["policy"] if r else None
            out["policyKind"] = r["kind"] if r else None
            out["rule"] = r["section"] if r else None
        else:
            by = self.table["selectedBy"].get(str(ev.ep_id), {}).get(direction, [])
            out["defaultDeny"] = by
        return out


def event_record(
    ev: MonitorEventC, names: dict[int, str], attrib: Attribution | None = None
) -> dict[str, Any]:
    """One event as `-o json` prints it."""
    from porin.maps.metrics import direction_name, reasons

    r = reasons().get(ev.reason)
    wall = time.time() - (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - ev.ktime_ns) / 1e9
    text, fields = summarize(ev.packet)
    policy: dict[str, Any] = {}
    if ev.type_name == "policy-verdict" or ev.rule_id or ev.reason in (150, 151):
        policy = (
            attrib.policy_fields(ev, direction_name(ev.dir)) if attrib else {"ruleId": ev.rule_id}
        )
        if ev.type_name == "policy-verdict":
            policy["verdict"] = "DENIED" if ev.reason else "ALLOWED"
    return {
        **policy,
        "time": datetime.fromtimestamp(wall).isoformat(timespec="microseconds"),
        "type": ev.type_name,
        "reason": (r.name if r else str(ev.reason))
        if ev.reason or ev.type_name != "policy-verdict"
        else "",
        "description": r.description if r else "",
        "direction": direction_name(ev.dir),
        "ifindex": ev.ifindex,
        "interface": _ifname(ev.ifindex, names),
        "endpoint": ev.ep_id or None,
        "srcIdentity": ev.src_identity or None,
        "dstIdentity": ev.dst_identity or None,
        "ctStatus": ev.ct_status_name or None,
        "length": ev.len,
        "summary": text,
        "packet": fields,
        "capture": ev.packet.hex(),
    }


def attribution_text(rec: dict[str, Any]) -> str:
    if "ruleId" not in rec:
        return ""
    if rec.get("policy"):
        how = f"{rec['policyKind']} {rec['policy']} {rec['rule']}"
    elif rec["ruleId"]:
        how = f"rule {rec['ruleId']}"
    else:
        how = "default deny: selected by " + (", ".join(rec.get("defaultDeny") or []) or "?")
    remote = rec.get("remoteIdentity")
    labels = f" ({rec['remoteLabels']})" if rec.get("remoteLabels") else ""
    return f" remote={remote}{labels} by {how}" if remote else f" by {how}"


def event_line(rec: dict[str, Any]) -> str:
    if rec["type"] == "policy-verdict":
        return (
            f"{rec['time'][11:]} policy-verdict ep={rec['endpoint']} {rec['direction']}: "
            f"{rec['summary']} {rec['verdict']}" + attribution_text(rec)
        )
    what = f"{rec['reason']} ({rec['description']})" if rec["type"] == "drop" else rec["reason"]
    context = []
    if rec["endpoint"]:
        context.append(f"ep={rec['endpoint']}")
    if rec["srcIdentity"] or rec["dstIdentity"]:
        context.append(f"identity={rec['srcIdentity'] or '?'}->{rec['dstIdentity'] or '?'}")
    if rec["ctStatus"]:
        context.append(f"ct={rec['ctStatus']}")
    return (
        f"{rec['time'][11:]} {rec['type']:<5} {what} {rec['interface']} {rec['direction']}: "
        f"{rec['summary']} len={rec['length']}"
        + "".join(f" {c}" for c in context)
        + attribution_text(rec)
    )


@click.command()
@click.option(
    "--type",
    "kind",
    type=click.Choice(["drop", "trace", "policy-verdict", "all"]),
    default="drop",
    show_default=True,
    help="drop: drops only; trace: every other verdict; policy-verdict: each new "
    "connection's policy decision; all: everything.",
)
@click.option("--reason", "reasons_", multiple=True, help="Only these reasons (e.g. INVALID_SIP).")
@click.option("--interface", "-i", help="Only events on this interface (name or ifindex).")
@click.option("--ip", "ips", multiple=True, help="Only packets from or to this address.")
@click.option("--count", "-n", type=int, default=0, help="Stop after N events.")
@click.option("--duration", type=float, default=0.0, help="Stop after S seconds.")
@output_option
@click.pass_obj
def monitor(
    ctx: Context,
    kind: str,
    reasons_: tuple[str, ...],
    interface: str | None,
    ips: tuple[str, ...],
    count: int,
    duration: float,
    output: str,
) -> None:
    """Show datapath drops (and traces) as they happen; -o json prints one object per line."""
    from porin.maps.metrics import reason_by_name
    from porin.maps.monitor_config import MonitorConfigMap
    from porin.maps.monitor_events import RingBuffer
    from porin.maps.monitor_lost import MonitorLostMap

    wanted = set()
    for name in reasons_:
        try:
            wanted.add(
                reason_by_name(name.upper().removeprefix("DROP_").removeprefix("REASON_")).code
            )
        except KeyError:
            fail(f"unknown reason {name!r} (see `porin metrics list`)")
    ifindex = None
    if interface:
        try:
            ifindex = int(interface) if interface.isdigit() else socket.if_nametoindex(interface)
        except OSError:
            fail(f"no interface {interface!r} in this network namespace")
    for ip in ips:
        try:
            socket.inet_aton(ip)
        except OSError:
            fail(f"--ip {ip!r} is no IPv4 address")
    types = {"drop": {1}, "trace": {2}, "policy-verdict": {3}, "all": {1, 2, 3}}[kind]
    switch = {
        "drop": MONITOR_F_DROPS,
        "trace": MONITOR_F_DROPS | MONITOR_F_TRACE,
        "policy-verdict": MONITOR_F_POLICY,
        "all": MONITOR_F_DROPS | MONITOR_F_TRACE | MONITOR_F_POLICY,
    }[kind]
    attrib = Attribution(ctx)

    with _exclusive(ctx.bpffs_root):
        try:
            ring = RingBuffer(ctx.bpffs_root)
            config = MonitorConfigMap(ctx.bpffs_root)
            lost = MonitorLostMap(ctx.bpffs_root, read_only=True)
        except MapNotFound as e:
            fail(f"{e} (an agent of this version creates it)")
        except PermissionError:
            fail(f"permission denied opening maps under {ctx.bpffs_root}; run as root")
        names: dict[int, str] = {}
        seen = 0
        deadline = time.monotonic() + duration if duration else None
        try:
            ring.skip_pending()  # whatever an earlier monitor left unread
            lost_before = lost.total()
            config.set_flags(switch)
            click.echo(f"Listening for {kind} events ({ctx.bpffs_root}); Ctrl-C to stop.", err=True)
            while not (count and seen >= count):
                left = deadline - time.monotonic() if deadline else 0.5
                if left <= 0:
                    break
                ring.wait(min(left, 0.5))
                for ev in ring.events():
                    if ev.type not in types:
                        continue
                    if (wanted and ev.reason not in wanted) or (
                        ifindex is not None and ev.ifindex != ifindex
                    ):
                        continue
                    rec = event_record(ev, names, attrib)
                    if ips and not {rec["packet"].get("src"), rec["packet"].get("dst")} & set(ips):
                        continue
                    click.echo(json.dumps(rec) if output == "json" else event_line(rec))
                    seen += 1
                    if count and seen >= count:
                        break
                gone = lost.total() - lost_before
                if gone:
                    click.echo(f"warning: {gone} events lost (ring buffer full)", err=True)
                    lost_before += gone
        except KeyboardInterrupt:
            pass
        finally:
            config.set_flags(0)
            ring.close()
            config.close()
            lost.close()
