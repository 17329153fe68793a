"""porin metrics ...: datapath counters from the pinned map, agent counters from the API."""

from __future__ import annotations

import click

from porin.cli.context import Context, open_map
from porin.cli.output import output_option, print_json, print_table

# ---------------- metrics ----------------


@click.group()
def metrics() -> None:
    """Datapath counters."""


@metrics.command("list")
@click.option("--drops", is_flag=True, help="Only drop reasons.")
@output_option
@click.pass_obj
def metrics_list(ctx: Context, drops: bool, output: str) -> None:
    """Packets and bytes by verdict reason and direction, then what the
    uplinks' XDP program returned (as `porin metrics xdp`)."""
    from porin.maps.metrics import MetricsMap
    from porin.maps.pinned import MapNotFound
    from porin.maps.xdp_metrics import XdpMetricsMap

    with open_map(ctx, MetricsMap) as m:
        rows = [
            {
                "reason": x.reason_text,
                "reasonName": x.reason_name,
                "reasonCode": x.reason,
                "drop": x.is_drop,
                "direction": x.direction_text,
                "packets": x.packets,
                "bytes": x.bytes,
            }
            for x in m.metrics()
            if x.is_drop or not drops
        ]
    try:
        with XdpMetricsMap(ctx.bpffs_root, read_only=True) as xm:
            actions = xm.totals()
    except MapNotFound:
        actions = {}  # no XDP on this node
    for name, packets in actions.items():
        if packets and (name in ("drop", "aborted") or not drops):
            rows.append(
                {
                    "reason": f"XDP action {name.upper()}",
                    "reasonName": f"XDP_ACTION_{name.upper()}",
                    "reasonCode": None,
                    "drop": name in ("drop", "aborted"),
                    "direction": "ingress",
                    "packets": packets,
                    "bytes": None,
                }
            )
    if output == "json":
        return print_json(rows)
    print_table(
        ("REASON", "DIRECTION", "PACKETS", "BYTES"),
        [
            (
                ("drop: " if r["drop"] else "") + r["reason"],
                r["direction"],
                r["packets"],
                "-" if r["bytes"] is None else r["bytes"],
            )
            for r in rows
        ],
    )


@metrics.command("agent")
@output_option
@click.pass_obj
def metrics_agent(ctx: Context, output: str) -> None:
    """Agent-side counters: conntrack GC."""
    st = ctx.api("GET", "/v1/ct/gc")
    if output == "json":
        return print_json({"conntrackGC": st})
    print_table(("METRIC", "VALUE"), [(f"ct_gc_{k}", v) for k, v in sorted(st.items())])


@metrics.command("xdp")
@output_option
@click.pass_obj
def metrics_xdp(ctx: Context, output: str) -> None:
    """What the uplinks' XDP program returned: aborted, drop, pass, tx, redirect."""
    from porin.maps.xdp_metrics import XdpMetricsMap

    with open_map(ctx, XdpMetricsMap) as m:
        totals = m.totals()
    if output == "json":
        return print_json(totals)
    print_table(("ACTION", "PACKETS"), [(k.upper(), v) for k, v in totals.items()])
