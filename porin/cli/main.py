"""porin: the admin CLI.

Commands that ask the agent go through its unix socket; `porin bpf ...` and
`porin metrics list` read the pinned maps directly, so they work even when
the agent is down.
"""

from __future__ import annotations

import os

import click

from porin.cli import (
    bpf,
    cluster,
    endpoints,
    metrics,
    monitor,
    observe,
    policy,
    prefilter,
    services,
    sysdump,
    trace,
)
from porin.cli.context import Context, fail
from porin.cli.output import output_option, print_json, print_table
from porin.client import DEFAULT_SOCKET
from porin.maps.pinned import DEFAULT_BPFFS_ROOT


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


# ---------------- status ----------------


@cli.command()
@click.option(
    "--verbose", "-v", is_flag=True, help="Also programs per device, map fill and controllers."
)
@output_option
@click.pass_obj
def status(ctx: Context, verbose: bool, output: str) -> None:
    """Agent, datapath and endpoint summary."""
    st = ctx.api("GET", "/v1/status" + ("?verbose=1" if verbose else ""))
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
            ", ".join(
                f"{d['name']} ({d['nodeIP']}"
                + "".join(
                    f", XDP {x['mode'] or 'none'}"
                    for x in st["host"].get("xdp", [])
                    if x["device"] == d["name"]
                )
                + ")"
                for d in st["host"]["devices"]
            )
            or "none",
        ),
        (
            "Host ports",
            (lambda hp: f"{hp['count']} (loopback: {hp['loopback']})" if hp else "-")(
                st["host"].get("hostPorts")
            ),
        ),
        (
            "NAT table",
            f"{st['host']['nat'].get('entries', 0)}/{st['host']['nat'].get('maxEntries', 0)}"
            " after last GC"
            if st["host"]["nat"]
            else "-",
        ),
        (
            "Conntrack",
            f"{st['conntrack']['lastAlive']}/{st['conntrack']['maxEntries']} after last GC"
            + _confirmed_line(st["conntrack"].get("confirmed") or {}),
        ),
        (
            "KVStore",
            f"{st['kvstore']['kind']} {st['kvstore']['endpoint']} {st['kvstore']['state']}".replace(
                "  ", " "
            ),
        ),
        ("Nodes", st["kvstore"]["nodes"]),
        ("Tunnel", f"{st['tunnel']['mode']} (pod MTU {st['tunnel']['podMTU']})"),
        ("Flow log", _flows_line(st.get("flows", {}))),
        ("Metrics", st.get("metrics", {}).get("prometheus", "")),
        ("BPF fs root", st["bpffsRoot"]),
        ("API socket", st["apiSocket"]),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<17}{v}")
    if verbose:
        _print_verbose(st["verbose"])


def _confirmed_line(c: dict) -> str:
    """The confirmed flows' protected copies (ct4_confirmed), when reported."""
    if not c:
        return ""
    return (
        f"; {c['entries']}/{c['maxEntries']} confirmed flows protected"
        f" ({c.get('restored', 0)} restored after eviction, "
        f"{c.get('protectFull', 0)} confirmed while full)"
    )


def _ago(t: float | None, now: float) -> str:
    return f"{now - t:.0f}s ago" if t else "never"


def _print_verbose(v: dict) -> None:
    import time

    now = time.time()
    click.echo("\nDatapath programs:")
    for d in v["devices"]:
        click.echo(f"  {d['device']}: {', '.join(d['programs'])}")
    click.echo("\nBPF maps that fill up:")
    print_table(
        ("  MAP", "ENTRIES", "CAPACITY", "FILL"),
        [
            (f"  {m['name']}", m["entries"], m["capacity"], f"{100 * m['pressure']:.1f}%")
            for m in v["maps"]
        ],
    )
    click.echo("\nControllers:")
    print_table(
        ("  NAME", "RUNS", "FAILURES", "LAST RUN", "LAST SUCCESS", "LAST ERROR"),
        [
            (
                f"  {c['name']}",
                c["runs"],
                f"{c['failures']} ({c['consecutiveFailures']} in a row)",
                _ago(c["lastRun"], now),
                _ago(c["lastSuccess"], now),
                c["lastError"] or "-",
            )
            for c in v["controllers"]
        ],
    )


def _flows_line(f: dict) -> str:
    if f.get("capture", "off") == "off":
        return "off"
    state = "capturing" if f.get("enabled") else "idle"
    missed = sum((f.get("lost") or {}).values())
    return f"{f['capture']}, {state}: {f.get('kept', 0)}/{f.get('bufferSize', 0)} kept" + (
        f", {missed} missed" if missed else ""
    )


for group in (
    endpoints.endpoint,
    services.service,
    metrics.metrics,
    bpf.bpf,
    cluster.node,
    cluster.identity,
    cluster.health,
    monitor.monitor,
    policy.policy,
    policy.apply,
    policy.delete,
    prefilter.prefilter,
    observe.observe,
    sysdump.sysdump,
    trace.trace,
):
    cli.add_command(group)
endpoints.endpoint.add_command(policy.endpoint_label)
bpf.bpf.add_command(policy.bpf_policy)


def main() -> None:
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    cli(prog_name="porin")


if __name__ == "__main__":
    main()
