"""porin service ...: load-balanced services."""

from __future__ import annotations

from typing import Any

import click

from porin.cli.context import Context, fail
from porin.cli.output import output_option, print_json, print_table

# ---------------- services ----------------


@click.group()
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
@click.argument("service_ids", type=int, nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Delete every service of this node.")
@click.pass_obj
def service_delete(ctx: Context, service_ids: tuple[int, ...], everything: bool) -> None:
    """Delete services by id (all of them or, if one is unknown, none), or --all."""
    if everything == bool(service_ids):
        fail("give service ids or --all (not both)")
    if everything:
        n = ctx.api("DELETE", "/v1/services")["deleted"]
        click.echo(f"{n} services deleted")
        return
    if len(service_ids) == 1:
        s = ctx.api("DELETE", f"/v1/services/{service_ids[0]}")["deleted"]
        click.echo(f"service {s['id']} {s['frontend']}/{s['protocol']} deleted")
        return
    n = ctx.api("POST", "/v1/services/batch", {"delete": list(service_ids)})["deleted"]
    click.echo(f"{n} services deleted")
