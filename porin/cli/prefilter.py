"""porin prefilter ...: source CIDRs the uplinks' XDP program drops first."""

from __future__ import annotations

import click

from porin.cli.context import Context
from porin.cli.output import output_option, print_json, print_table


@click.group()
def prefilter() -> None:
    """The XDP prefilter (source addresses dropped before anything else)."""


@prefilter.command("list")
@output_option
@click.pass_obj
def prefilter_list(ctx: Context, output: str) -> None:
    """The deny list and what each entry dropped."""
    rows = ctx.api("GET", "/v1/prefilter")
    if output == "json":
        return print_json(rows)
    print_table(
        ("CIDR", "SOURCE", "PACKETS", "BYTES"),
        [(r["cidr"], r["source"], r["packets"], r["bytes"]) for r in rows],
    )


@prefilter.command("add")
@click.argument("cidrs", nargs=-1, required=True)
@click.pass_obj
def prefilter_add(ctx: Context, cidrs: tuple[str, ...]) -> None:
    """Drop traffic from these sources (all or none are added)."""
    res = ctx.api("PUT", "/v1/prefilter", {"cidrs": list(cidrs)})
    for c in res["added"]:
        click.echo(f"{c} added")


@prefilter.command("delete")
@click.argument("cidrs", nargs=-1, required=True)
@click.pass_obj
def prefilter_delete(ctx: Context, cidrs: tuple[str, ...]) -> None:
    """Stop dropping traffic from these sources."""
    res = ctx.api("POST", "/v1/prefilter/delete", {"cidrs": list(cidrs)})
    for c in res["deleted"]:
        click.echo(f"{c} deleted")
