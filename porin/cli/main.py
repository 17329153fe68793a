"""porin: the admin CLI.

Commands that ask the agent go through its unix socket; `porin bpf ...` and
`porin metrics list` read the pinned maps directly, so they work even when
the agent is down.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from porin.cli.output import output_option, print_json, print_table
from porin.client import DEFAULT_SOCKET, AgentClient, AgentUnavailable, ApiError
from porin.maps.pinned import DEFAULT_BPFFS_ROOT, MapNotFound


@dataclass
class Context:
    socket: str
    bpffs_root: str

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout=30)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return self.client().request(method, path, body)
        except AgentUnavailable as e:
            fail(str(e))
        except ApiError as e:
            fail(f"agent: {e.message}")


def fail(msg: str) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(1)


def _from_config(path: str | None) -> tuple[str | None, str | None]:
    if not path:
        return None, None
    from porin.daemon.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        fail(str(e))
    return cfg.api_socket, cfg.bpffs_root


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", envvar="PORIN_CONFIG", help="Agent config to take paths from.")
@click.option("--socket", envvar="PORIN_SOCKET", help=f"Agent API socket [{DEFAULT_SOCKET}].")
@click.option(
    "--bpffs-root", envvar="PORIN_BPFFS_ROOT", help=f"Pinned maps [{DEFAULT_BPFFS_ROOT}]."
)
@click.pass_context
def cli(ctx: click.Context, config: str | None, socket: str | None, bpffs_root: str | None) -> None:
    """Inspect and drive a Porin node."""
    cfg_socket, cfg_root = _from_config(config)
    ctx.obj = Context(
        socket=socket or cfg_socket or DEFAULT_SOCKET,
        bpffs_root=bpffs_root or cfg_root or DEFAULT_BPFFS_ROOT,
    )


def open_map(ctx: Context, cls: type) -> Any:
    try:
        return cls(ctx.bpffs_root, read_only=True)
    except MapNotFound as e:
        fail(str(e))
    except PermissionError:
        fail(f"permission denied opening maps under {ctx.bpffs_root}; run as root")


# ---------------- status ----------------


@cli.command()
@output_option
@click.pass_obj
def status(ctx: Context, output: str) -> None:
    """Agent, datapath and endpoint summary."""
    st = ctx.api("GET", "/v1/status")
    if output == "json":
        return print_json(st)
    rows = [
        ("Node", st["node"]),
        ("Version", st["version"]),
        ("Uptime", f"{st['uptimeSeconds']}s"),
        ("Pod CIDR", st["podCIDR"]),
        ("Gateway", st["gateway"]),
        ("MTU", st["mtu"]),
        ("Endpoints", f"{st['endpoints']['ready']}/{st['endpoints']['total']} ready"),
        ("IPAM", f"{st['ipam']['allocated']}/{st['ipam']['capacity']} allocated"),
        ("Programs", ", ".join(st["datapath"]["programs"])),
        ("Endpoints map", st["datapath"]["endpointsMap"]),
        ("Dropped packets", st["datapath"]["droppedPackets"]),
        ("Services", st.get("services", 0)),
        ("Masquerade", st["host"]["masquerade"]),
        (
            "Devices",
            ", ".join(f"{d['name']} ({d['nodeIP']})" for d in st["host"]["devices"]) or "none",
        ),
        (
            "NAT table",
            f"{st['host']['nat'].get('entries', 0)}/{st['host']['nat'].get('max_entries', 0)}"
            if st["host"]["nat"]
            else "-",
        ),
        (
            "Conntrack",
            f"{st['conntrack']['last_alive']}/{st['conntrack']['max_entries']} after last GC",
        ),
        (
            "KVStore",
            f"{st['kvstore']['kind']} {st['kvstore']['endpoint']} {st['kvstore']['state']}".replace(
                "  ", " "
            ),
        ),
        ("Nodes", st["kvstore"]["nodes"]),
        ("Tunnel", f"{st['tunnel']['mode']} (pod MTU {st['tunnel']['podMTU']})"),
        ("BPF fs root", st["bpffsRoot"]),
        ("API socket", st["apiSocket"]),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<17}{v}")


# ---------------- endpoint ----------------


@cli.group()
def endpoint() -> None:
    """Endpoints (pods attached by the CNI plugin)."""


ENDPOINT_HEADERS = ("ID", "CONTAINER ID", "IFNAME", "IPV4", "MAC", "HOST IFACE", "STATE")


def _endpoint_row(ep: dict[str, Any]) -> tuple[Any, ...]:
    return (
        ep["id"],
        ep["container_id"][:12],
        ep["ifname"],
        ep["ipv4"],
        ep["mac"],
        ep["host_ifname"],
        ep["state"],
    )


@endpoint.command("list")
@output_option
@click.pass_obj
def endpoint_list(ctx: Context, output: str) -> None:
    """List endpoints."""
    eps = ctx.api("GET", "/v1/endpoints")
    if output == "json":
        return print_json(eps)
    print_table(ENDPOINT_HEADERS, [_endpoint_row(e) for e in eps])


@endpoint.command("get")
@click.argument("endpoint_id", type=int)
@output_option
@click.pass_obj
def endpoint_get(ctx: Context, endpoint_id: int, output: str) -> None:
    """Show one endpoint."""
    ep = ctx.api("GET", f"/v1/endpoints/{endpoint_id}")
    if output == "json":
        return print_json(ep)
    for key in (
        "id",
        "container_id",
        "ifname",
        "netns",
        "network",
        "ipv4",
        "gateway",
        "mac",
        "mtu",
        "host_ifname",
        "host_ifindex",
        "host_mac",
        "ipam",
        "state",
        "labels",
    ):
        click.echo(f"{key + ':':<14}{ep.get(key)}")


# ---------------- metrics ----------------


@cli.group()
def metrics() -> None:
    """Datapath counters."""


@metrics.command("list")
@click.option("--drops", is_flag=True, help="Only drop reasons.")
@output_option
@click.pass_obj
def metrics_list(ctx: Context, drops: bool, output: str) -> None:
    """Packets and bytes by verdict reason and direction."""
    from porin.maps.metrics import MetricsMap

    with open_map(ctx, MetricsMap) as m:
        rows = [x for x in m.metrics() if x.is_drop or not drops]
    if output == "json":
        return print_json(
            [
                {
                    "reason": x.reason_text,
                    "reasonCode": x.reason,
                    "drop": x.is_drop,
                    "direction": x.direction_text,
                    "packets": x.packets,
                    "bytes": x.bytes,
                }
                for x in rows
            ]
        )
    print_table(
        ("REASON", "DIRECTION", "PACKETS", "BYTES"),
        [
            (("drop: " if x.is_drop else "") + x.reason_text, x.direction_text, x.packets, x.bytes)
            for x in rows
        ],
    )


# ---------------- bpf (raw maps) ----------------


@cli.group()
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


# ---------------- services ----------------


@cli.group()
def service() -> None:
    """Load-balanced services (frontend VIP:port -> backends)."""


def _backends_text(svc: dict[str, Any]) -> str:
    parts = []
    for b in svc["backends"]:
        extra = [] if b["state"] == "active" else [b["state"]]
        if b["weight"] != 1:
            extra.append(f"weight={b['weight']}")
        parts.append(b["address"] + (f" ({', '.join(extra)})" if extra else ""))
    return ", ".join(parts) or "(none)"


@service.command("list")
@output_option
@click.pass_obj
def service_list(ctx: Context, output: str) -> None:
    """List services."""
    svcs = ctx.api("GET", "/v1/services")
    if output == "json":
        return print_json(svcs)
    print_table(
        ("ID", "FRONTEND", "PROTO", "TYPE", "ALGORITHM", "AFFINITY", "BACKENDS"),
        [
            (
                s["id"],
                s["frontend"],
                s["protocol"].upper(),
                s["type"].upper()
                + (
                    f" :{s['nodePort']} ({s['externalTrafficPolicy']})"
                    if s["type"] == "nodeport"
                    else ""
                ),
                s["algorithm"],
                f"{s['affinityTimeout']}s" if s["affinityTimeout"] else "-",
                _backends_text(s),
            )
            for s in svcs
        ],
    )


@service.command("get")
@click.argument("service_id", type=int)
@output_option
@click.pass_obj
def service_get(ctx: Context, service_id: int, output: str) -> None:
    """Show one service."""
    s = ctx.api("GET", f"/v1/services/{service_id}")
    if output == "json":
        return print_json(s)
    for k in (
        "id",
        "frontend",
        "protocol",
        "type",
        "nodePort",
        "externalTrafficPolicy",
        "algorithm",
        "affinityTimeout",
        "source",
    ):
        click.echo(f"{k + ':':<17}{s[k]}")
    click.echo("backends:")
    for b in s["backends"]:
        bid = s.get("backendIds", {}).get(b["address"], "?")
        click.echo(f"  {b['address']:<22} id={bid:<6} weight={b['weight']:<4} {b['state']}")


def _parse_backends(text: str) -> list[dict[str, Any]]:
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        addr, *opts = item.split("/")
        b: dict[str, Any] = {"address": addr}
        for opt in opts:
            if opt.isdigit():
                b["weight"] = int(opt)
            else:
                b["state"] = opt
        out.append(b)
    return out


@service.command("update")
@click.option("--id", "service_id", type=int, required=True, help="Service ID (1-32767).")
@click.option("--frontend", required=True, help="VIP:PORT")
@click.option("--protocol", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option(
    "--backends",
    default="",
    help="IP:PORT[/WEIGHT][/STATE],... (STATE: active, terminating, maintenance).",
)
@click.option(
    "--algorithm", type=click.Choice(["random", "maglev"]), default="random", show_default=True
)
@click.option(
    "--affinity-timeout", type=int, default=0, show_default=True, help="ClientIP affinity, s."
)
@click.option(
    "--type",
    "svc_type",
    type=click.Choice(["clusterip", "nodeport"]),
    default="clusterip",
    show_default=True,
)
@click.option("--node-port", type=int, default=0, help="NodePort (default: allocated).")
@click.option(
    "--external-traffic-policy",
    type=click.Choice(["cluster", "local"]),
    default="cluster",
    show_default=True,
)
@output_option
@click.pass_obj
def service_update(
    ctx: Context,
    service_id: int,
    frontend: str,
    protocol: str,
    backends: str,
    algorithm: str,
    affinity_timeout: int,
    svc_type: str,
    node_port: int,
    external_traffic_policy: str,
    output: str,
) -> None:
    """Create or update a service."""
    body = {
        "id": service_id,
        "frontend": frontend,
        "protocol": protocol,
        "backends": _parse_backends(backends),
        "algorithm": algorithm,
        "affinityTimeout": affinity_timeout,
        "type": svc_type,
        "nodePort": node_port,
        "externalTrafficPolicy": external_traffic_policy,
    }
    s = ctx.api("PUT", f"/v1/services/{service_id}", body)
    if output == "json":
        return print_json(s)
    np = f" nodePort {s['nodePort']}" if s["type"] == "nodeport" else ""
    click.echo(f"service {s['id']} {s['frontend']}/{s['protocol']}{np}: {_backends_text(s)}")


@service.command("delete")
@click.argument("service_id", type=int)
@click.pass_obj
def service_delete(ctx: Context, service_id: int) -> None:
    """Delete a service."""
    s = ctx.api("DELETE", f"/v1/services/{service_id}")["deleted"]
    click.echo(f"service {s['id']} {s['frontend']}/{s['protocol']} deleted")


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
    from porin.maps.lb_services import SVC_F_AFFINITY, SVC_F_MAGLEV, ServicesMap

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
                for bit, n in ((SVC_F_MAGLEV, "maglev"), (SVC_F_AFFINITY, "affinity"))
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
                    "backend": bj,
                }
                for f, _, s, bj in rows
            ]
        )
    print_table(
        ("SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"), [(f, w) for f, w, _, _ in rows]
    )


@bpf.group("ct")
def bpf_ct() -> None:
    """The conntrack table."""


def _ct_line(c: Any) -> str:
    kind = "SVC" if c.service else c.direction
    extra = (" Hairpin" if c.hairpin else "") + (" Related" if c.related else "")
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
    SVC: the client -> service-frontend entry that pins the backend)."""
    from porin.maps.conntrack import ConntrackMap

    with open_map(ctx, ConntrackMap) as m:
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
    """Delete every conntrack entry."""
    from porin.maps.conntrack import ConntrackMap

    try:
        with ConntrackMap(ctx.bpffs_root) as m:
            n = m.flush()
    except MapNotFound as e:
        fail(str(e))
    click.echo(f"Flushed {n} entries from the global conntrack table")


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


@metrics.command("agent")
@output_option
@click.pass_obj
def metrics_agent(ctx: Context, output: str) -> None:
    """Agent-side counters: conntrack GC."""
    st = ctx.api("GET", "/v1/ct/gc")
    if output == "json":
        return print_json({"conntrackGC": st})
    print_table(("METRIC", "VALUE"), [(f"ct_gc_{k}", v) for k, v in sorted(st.items())])


# ---------------- cluster ----------------


@cli.group()
def node() -> None:
    """Nodes of the cluster (from the kvstore)."""


@node.command("list")
@output_option
@click.pass_obj
def node_list(ctx: Context, output: str) -> None:
    """Name, IP, pod CIDR and health of every node."""
    nodes = ctx.api("GET", "/v1/nodes")
    if output == "json":
        return print_json(nodes)
    print_table(
        ("NAME", "IPV4", "POD CIDR", "TUNNEL", "HEALTH"),
        [
            (
                n["name"] + (" (self)" if n["self"] else ""),
                n["ip"],
                n["podCIDR"],
                n["tunnel"],
                n["health"],
            )
            for n in nodes
        ],
    )


@cli.group()
def identity() -> None:
    """Security identities."""


@identity.command("list")
@output_option
@click.pass_obj
def identity_list(ctx: Context, output: str) -> None:
    """Numeric identities and their labels (reserved ones first)."""
    ids = ctx.api("GET", "/v1/identities")
    if output == "json":
        return print_json(ids)
    print_table(
        ("ID", "LABELS"),
        [
            (i["id"], ", ".join(f"{k}={v}" if v else k for k, v in sorted(i["labels"].items())))
            for i in ids
        ],
    )


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


def main() -> None:
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    cli(prog_name="porin")


if __name__ == "__main__":
    main()
