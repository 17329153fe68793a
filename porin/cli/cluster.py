"""porin node / identity ...: the cluster as this node's agent sees it."""

from __future__ import annotations

import click

from porin.cli.context import Context
from porin.cli.output import output_option, print_json, print_table

# ---------------- cluster ----------------


@click.group()
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


@click.group()
def identity() -> None:
    """Security identities."""


@identity.command("list")
@output_option
@click.pass_obj
def identity_list(ctx: Context, output: str) -> None:
    """Numeric identities, their labels and who uses them (reserved ones
    first). An identity no endpoint uses is released after the agent's
    identityGCGracePeriod; RELEASE says in how long, as this node sees it."""
    ids = ctx.api("GET", "/v1/identities")
    if output == "json":
        return print_json(ids)

    def used(i: dict) -> tuple[str, str, str]:
        if i.get("reserved"):
            return "reserved", "", ""
        nodes = ", ".join(f"{n}={c}" for n, c in sorted(i.get("nodes", {}).items()))
        release = f"in {i['releasedInSeconds']}s" if "releasedInSeconds" in i else ""
        return str(i.get("endpoints", 0)), nodes, release

    print_table(
        ("ID", "ENDPOINTS", "NODES", "RELEASE", "LABELS"),
        [
            (
                i["id"],
                *used(i),
                ", ".join(f"{k}={v}" if v else k for k, v in sorted(i["labels"].items())),
            )
            for i in ids
        ],
    )


# ---------------- health ----------------


@click.group()
def health() -> None:
    """Whether this node reaches the others (daemon/health.py)."""


def _path(p: dict) -> str:
    if p["reachable"] is None:
        return "not probed yet"
    if p["reachable"]:
        return f"ok {p['latencyMs']:.2f}ms"
    return f"FAILED ({p['lastError']})"


@health.command("status")
@output_option
@click.pass_obj
def health_status(ctx: Context, output: str) -> None:
    """Per node: the node network (ICMP, HTTP) and the overlay, latency, last error."""
    nodes = ctx.api("GET", "/v1/health")
    if output == "json":
        return print_json(nodes)
    print_table(
        ("NODE", "IP", "ICMP", "HTTP", "OVERLAY"),
        [
            (
                n["name"],
                n["ip"],
                _path(n["nodeNetwork"]["icmp"]),
                _path(n["nodeNetwork"]["http"]),
                _path(n["overlay"]["http"]) if n["overlayIP"] else "no overlay address",
            )
            for n in nodes
        ],
    )
