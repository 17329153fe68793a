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
