"""porin endpoint ...: endpoints the CNI plugin attached."""

from __future__ import annotations

from typing import Any

import click

from porin.cli.context import Context
from porin.cli.output import output_option, print_json, print_table

# ---------------- endpoint ----------------


@click.group()
def endpoint() -> None:
    """Endpoints (pods attached by the CNI plugin)."""


ENDPOINT_HEADERS = ("ID", "CONTAINER ID", "IFNAME", "IPV4", "MAC", "HOST IFACE", "STATE")


def _endpoint_row(ep: dict[str, Any]) -> tuple[Any, ...]:
    return (
        ep["id"],
        ep["containerID"][:12],
        ep["ifname"],
        ep["ipv4"],
        ep["mac"],
        ep["hostIfname"],
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
        "containerID",
        "ifname",
        "netns",
        "network",
        "ipv4",
        "gateway",
        "mac",
        "mtu",
        "hostIfname",
        "hostIfindex",
        "hostMac",
        "ipam",
        "state",
        "labels",
    ):
        click.echo(f"{key + ':':<14}{ep.get(key)}")
