"""porin bpf ...: raw views of the pinned maps (they work while the agent is down)."""

from __future__ import annotations

from typing import Any

import click

from porin.cli.context import Context, fail, open_map
from porin.cli.output import output_option, print_json, print_table
from porin.maps.pinned import MapNotFound

# ---------------- bpf (raw maps) ----------------


@click.group()
def bpf() -> None:
    """Raw views of the pinned BPF maps."""


@bpf.group("endpoint")
def bpf_endpoint() -> None:
    """The endpoints map."""


@bpf_endpoint.command("list")
@output_option
@click.pass_obj
def bpf_endpoint_list(ctx: Context, output: str) -> None:
    """IP -> ifindex, endpoint id, MACs, as the datapath sees them."""
    from porin.maps.endpoints import EndpointsMap

    with open_map(ctx, EndpointsMap) as m:
        entries = m.entries()
    if output == "json":
        return print_json([e.__dict__ for e in entries])
    print_table(
        ("IP ADDRESS", "IFINDEX", "ENDPOINT", "MAC", "NODE MAC", "IDENTITY"),
        [(e.ip, e.ifindex, e.endpoint_id, e.mac, e.node_mac, e.identity) for e in entries],
    )


# ---------------- bpf lb / ct ----------------


@bpf.group("lb")
def bpf_lb() -> None:
    """The load-balancer maps."""


@bpf_lb.command("list")
@output_option
@click.pass_obj
def bpf_lb_list(ctx: Context, output: str) -> None:
    """Frontend slots and the backends they point to, as the datapath sees them."""
    from porin.maps.lb_backends import BackendsMap
    from porin.maps.lb_common import proto_name
    from porin.maps.lb_services import SVC_F_AFFINITY, SVC_F_MAGLEV, SVC_F_XDP, ServicesMap

    with open_map(ctx, ServicesMap) as sm, open_map(ctx, BackendsMap) as bm:
        slots = sm.slots()
        backends = bm.backends()
    rows = []
    rev_nat_of = {(s.ip, s.port, s.proto): s.rev_nat for s in slots if s.slot == 0}
    for s in slots:
        front = f"{s.ip}:{s.port}/{proto_name(s.proto)}"
        if s.slot == 0:
            flags = [
                n
                for bit, n in (
                    (SVC_F_MAGLEV, "maglev"),
                    (SVC_F_AFFINITY, "affinity"),
                    (SVC_F_XDP, "xdp"),
                )
                if s.flags & bit
            ]
            tags = ", ".join([f"{s.count} slots", *flags])
            what = f"0.0.0.0:0 ({s.rev_nat}) [{tags}]"
            b_json = None
        else:
            b = backends.get(s.backend_id)
            addr = f"{b.ip}:{b.host_port}" if b else f"<missing backend {s.backend_id}>"
            state = f" {b.state_name}" if b and b.state_name != "active" else ""
            rid = rev_nat_of.get((s.ip, s.port, s.proto), 0)
            what = f"{addr} ({rid}) ({s.slot}){state}"
            b_json = {"id": s.backend_id, "address": addr, "state": b.state_name if b else None}
        rows.append((front, what, s, b_json))
    if output == "json":
        return print_json(
            [
                {
                    "service": f,
                    "slot": s.slot,
                    "revNat": s.rev_nat,
                    "count": s.count,
                    "flags": s.flags,
                    "xdp": bool(s.flags & SVC_F_XDP),
                    "backend": bj,
                }
                for f, _, s, bj in rows
            ]
        )
    print_table(
        ("SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"), [(f, w) for f, w, _, _ in rows]
    )


@bpf.group("frag")
def bpf_frag() -> None:
    """The fragment map (lib/frag.h): datagrams whose first fragment was seen."""


@bpf_frag.command("list")
@output_option
@click.pass_obj
def bpf_frag_list(ctx: Context, output: str) -> None:
    """Source, destination, IP id and protocol -> the ports of the first fragment."""
    from porin.maps.frag4 import Frag4Map

    with open_map(ctx, Frag4Map) as m:
        rows = m.datagrams()
    if output == "json":
        return print_json([d.to_json() for d in rows])
    print_table(
        ("PROTO", "SOURCE", "DESTINATION", "IP ID"),
        [(d.proto, f"{d.src}:{d.sport}", f"{d.dst}:{d.dport}", d.ip_id) for d in rows],
    )


@bpf.group("ct")
def bpf_ct() -> None:
    """The conntrack table."""


def _ct_line(c: Any) -> str:
    kind = "SVC" if c.service else c.direction
    extra = (
        (" Hairpin" if c.hairpin else "")
        + (" Related" if c.related else "")
        + (" MultiCPU" if c.multi_cpu else "")
        + (" DSR" if c.dsr else "")
        + (" Protected" if c.protected else "")
        + (" Unprotected" if c.unprotected else "")
        + (" Evicted" if c.evicted else "")
    )
    return (
        f"{c.proto} {kind} {c.src}:{c.sport} -> {c.dst}:{c.dport} state={c.state} "
        f"expires={c.expires_in} RxPackets={c.rx_packets} RxBytes={c.rx_bytes} "
        f"TxPackets={c.tx_packets} TxBytes={c.tx_bytes} TxFlags={c.tx_flags} RxFlags={c.rx_flags} "
        f"RevNAT={c.rev_nat} BackendID={c.backend_id} Age={c.age}s{extra}"
    )


@bpf_ct.command("list")
@click.argument("table", type=click.Choice(["global"]))
@click.option("--src", help="Initiator address (exact).")
@click.option("--dst", help="Responder address (exact).")
@click.option("--port", type=int, help="Either port.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]))
@click.option("--state", help="State name, e.g. ESTABLISHED.")
@output_option
@click.pass_obj
def bpf_ct_list(
    ctx: Context,
    table: str,
    src: str | None,
    dst: str | None,
    port: int | None,
    proto: str | None,
    state: str | None,
    output: str,
) -> None:
    """Connections: SRC opened the connection to DST (OUT: by a local pod, IN: towards one,
    SVC: a service connection, client -> frontend, with its backend and both directions'
    counters; its client -> backend entry translates the replies back). Protected: a
    confirmed flow, whose copy a flood of new flows cannot evict; Evicted: only that copy
    is left, and the flow's next packet puts its entry back."""
    from porin.maps.conntrack_tables import Conntrack

    with open_map(ctx, Conntrack) as m:
        conns = m.connections()
    sel = [
        c
        for c in conns
        if (src is None or c.src == src)
        and (dst is None or c.dst == dst)
        and (port is None or port in (c.sport, c.dport))
        and (proto is None or c.proto == proto.upper())
        and (state is None or c.state == state.upper())
    ]
    sel.sort(key=lambda c: (c.proto, c.src, c.sport, c.dst, c.dport, c.service))
    if output == "json":
        return print_json([c.to_json() for c in sel])
    for c in sel:
        click.echo(_ct_line(c))


@bpf_ct.command("flush")
@click.argument("table", type=click.Choice(["global"]))
@click.pass_obj
def bpf_ct_flush(ctx: Context, table: str) -> None:
    """Delete every conntrack entry (both tables)."""
    from porin.maps.conntrack_tables import Conntrack
    from porin.maps.ct4_stats import CtStatsMap

    try:
        with Conntrack(ctx.bpffs_root) as m, CtStatsMap(ctx.bpffs_root) as stats:
            n = m.flush()
            stats.set_entries(0)
    except MapNotFound as e:
        fail(str(e))
    click.echo(f"Flushed {n} entries from the conntrack tables")


@bpf.group("nat")
def bpf_nat() -> None:
    """The masquerade (SNAT) table."""


@bpf_nat.command("list")
@click.option("--src", help="Source address as the packet carries it.")
@click.option("--dst", help="Destination address as the packet carries it.")
@click.option("--port", type=int, help="Any port of the entry (original or translated).")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]))
@output_option
@click.pass_obj
def bpf_nat_list(
    ctx: Context, src: str | None, dst: str | None, port: int | None, proto: str | None, output: str
) -> None:
    """OUT: pod -> world, source translated (XLATE_SRC); IN: world -> node, destination
    translated back to the pod (XLATE_DST)."""
    from porin.maps.nat import NatMap

    with open_map(ctx, NatMap) as m:
        entries = m.translations()
    sel = [
        t
        for t in entries
        if (src is None or t.src == src)
        and (dst is None or t.dst == dst)
        and (port is None or port in (t.sport, t.dport, t.xlate_port))
        and (proto is None or t.proto == proto.upper())
    ]
    sel.sort(key=lambda t: (t.direction != "OUT", t.proto, t.src, t.sport, t.dst, t.dport))
    if output == "json":
        return print_json([t.to_json() for t in sel])
    for t in sel:
        what = "XLATE_SRC" if t.direction == "OUT" else "XLATE_DST"
        click.echo(
            f"{t.proto} {t.direction} {t.src}:{t.sport} -> {t.dst}:{t.dport} "
            f"{what} {t.xlate_addr}:{t.xlate_port} Created={t.created_ago}s ago NeedsCT=1"
        )


@bpf_nat.command("flush")
@click.pass_obj
def bpf_nat_flush(ctx: Context) -> None:
    """Delete every NAT entry (masqueraded connections break)."""
    from porin.maps.nat import NatMap

    try:
        with NatMap(ctx.bpffs_root) as m:
            n = m.flush()
    except MapNotFound as e:
        fail(str(e))
    click.echo(f"Flushed {n} entries from the NAT table")


@bpf.group("ipcache")
def bpf_ipcache() -> None:
    """The ipcache map."""


def _ipcache_entries(ctx: Context) -> list[Any]:
    from porin.maps.ipcache import IpcacheMap

    with open_map(ctx, IpcacheMap) as m:
        return m.entries()


@bpf_ipcache.command("list")
@output_option
@click.pass_obj
def bpf_ipcache_list(ctx: Context, output: str) -> None:
    """PREFIX -> IDENTITY, TUNNEL ENDPOINT (0.0.0.0: not behind a tunnel)."""
    entries = _ipcache_entries(ctx)
    if output == "json":
        return print_json([e.to_json() for e in entries])
    print_table(
        ("PREFIX", "IDENTITY", "TUNNEL ENDPOINT", "FLAGS"),
        [
            (e.prefix, e.identity, e.tunnel_endpoint or "0.0.0.0", "node" if e.node else "")
            for e in entries
        ],
    )


@bpf.group("tunnel")
def bpf_tunnel() -> None:
    """Where the overlay sends each prefix."""


@bpf_tunnel.command("list")
@output_option
@click.pass_obj
def bpf_tunnel_list(ctx: Context, output: str) -> None:
    """PREFIX -> TUNNEL ENDPOINT, for everything behind another node."""
    from porin.maps.tunnel_config import TunnelConfigMap

    with open_map(ctx, TunnelConfigMap) as m:
        mode = m.current().mode_name
    entries = [e for e in _ipcache_entries(ctx) if e.tunnel_endpoint]
    if output == "json":
        return print_json(
            {
                "mode": mode,
                "entries": [
                    {"prefix": e.prefix, "tunnelEndpoint": e.tunnel_endpoint} for e in entries
                ],
            }
        )
    click.echo(f"tunnel mode: {mode}")
    print_table(("PREFIX", "TUNNEL ENDPOINT"), [(e.prefix, e.tunnel_endpoint) for e in entries])
