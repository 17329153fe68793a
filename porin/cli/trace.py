"""porin trace: what this node's datapath would do with one packet.

The agent runs the packet through the trace build of its programs over
copies of the live maps (daemon/trace.py): nothing live changes.
"""

from __future__ import annotations

from typing import Any

import click

from porin.cli.context import Context, fail
from porin.cli.output import output_option, print_json

FIRST_TRACE_TIMEOUT = 300  # seconds: the first trace compiles the trace build


def parse_to(text: str) -> tuple[str, int, str]:
    """IP:PORT/PROTO (IP/icmp for a ping) -> (ip, port, protocol)."""
    addr, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    ip, _, port = addr.partition(":")
    if proto == "icmp":
        return ip, 0, proto
    if not port.isdigit():
        raise click.BadParameter(f"{text!r}: give IP:PORT/PROTO, e.g. 10.96.0.10:80/tcp")
    return ip, int(port), proto


@click.command("trace")
@click.option("--from", "source", required=True, help="NAMESPACE/POD, endpoint id, or an IP")
@click.option("--to", "to", required=True, help="IP:PORT/PROTO (tcp, udp), or IP/icmp")
@click.option("--flags", default="S", show_default=True, help="TCP flags: S, SA, A, FA, R ...")
@click.option("--sport", type=int, default=0, help="source port (ICMP: echo id)")
@click.option("--device", default="", help="the uplink an outside packet enters by")
@output_option
@click.pass_obj
def trace(
    ctx: Context, source: str, to: str, flags: str, sport: int, device: str, output: str
) -> None:
    """Run one packet through this node's programs and print each decision.

    A pod's packet enters at its veth (from_container), an outside one at
    the uplink (XDP, then from_netdev). Conntrack, NAT, affinity and the
    counters are copies: the live datapath is not changed.
    """
    ip, port, proto = parse_to(to)
    body: dict[str, Any] = {"from": source, "to": ip, "port": port, "protocol": proto}
    body["flags"] = flags
    if sport:
        body["sourcePort"] = sport
    if device:
        body["device"] = device
    res = ctx.api("POST", "/v1/trace", body, timeout=FIRST_TRACE_TIMEOUT)
    if output == "json":
        print_json(res)
        return
    if not isinstance(res, dict):
        fail(f"unexpected answer from the agent: {res!r}")
    src = res["source"]
    who = f"{src['namespace']}/{src['pod']}" if src.get("pod") else src["ip"]
    click.echo(f"packet  {res['packet']['summary']}")
    click.echo(f"from    {who} ({src['kind']}, enters at {src['device']})")
    n = 0
    for st in res["stages"]:
        click.echo(f"\n{st['program']} on {st['device']}:")
        for d in st["decisions"]:
            n += 1
            click.echo(f"  {n:2}. {d['text']}")
        click.echo(f"      returns {st['verdict']['return']}; out: {st['packetOut']['summary']}")
    ch = res["changes"]
    for c in ch.get("conntrack", []):
        what = {"created": "would create", "confirmed": "would confirm"}.get(c["change"], "matches")
        click.echo(
            f"\nconntrack {what}: {c['proto']} {c['src']}:{c['sport']} -> {c['dst']}:{c['dport']}"
            f" {c['direction']} {c['state']}"
            + (f" backend {c['backend_id']}" if c["service"] else "")
        )
    for t in ch.get("nat", []):
        click.echo(
            f"NAT would create: {t['direction']} {t['src']}:{t['sport']} -> {t['dst']}:{t['dport']}"
            f" as {t['xlate_addr']}:{t['xlate_port']}"
        )
    v = res["verdict"]
    final = "DROPPED" if v.get("dropped") else "FORWARDED"
    click.echo(f"\nverdict: {final} {v.get('reason', '')} ({v.get('description', '')})")
