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


def main() -> None:
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    cli(prog_name="porin")


if __name__ == "__main__":
    main()
