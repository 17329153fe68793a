"""porin observe: the flow log of this node, or of every node (--cluster).

Flows come from the agent (daemon/flows.py); the filters are applied by
the agent that holds the flows (daemon/flow_filter.py). With --cluster the
other nodes are found through this node's agent (the kvstore's node list)
and read over their read-only peer API (daemon/peer_api.py, healthPort on
the node IP).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import click

from porin.cli.context import Context, fail
from porin.client import AgentUnavailable, ApiError

DEFAULT_PEER_PORT = 4240


def _query(**kw: Any) -> str:
    return urlencode({k: v for k, v in kw.items() if v not in (None, "", ())})


def _end(e: dict[str, Any]) -> str:
    who = f"{e['namespace']}/{e['pod_name']}" if e.get("pod_name") else e.get("ip", "")
    return who


def _addr(e: dict[str, Any], port: Any) -> str:
    return f"{_end(e)}:{port}" if port is not None else _end(e)


def flow_line(f: dict[str, Any]) -> str:
    l4 = f["l4"]
    src = _addr(f["source"], l4.get("source_port"))
    dst = _addr(f["destination"], l4.get("destination_port"))
    proto = l4.get("protocol", "")
    flags = ",".join(l4.get("flags") or [])
    what = f["verdict"].upper()
    if f["verdict"] == "dropped":
        what += f" ({f['drop_reason']})"
    elif f["verdict"] == "translated":
        what += f" ({f['service'] if f.get('service') else f['reason']})"
    extra = []
    if f.get("policy", {}).get("rule_id"):
        extra.append(f"rule {f['policy']['rule_id']}")
    if f.get("is_reply"):
        extra.append("reply")
    tail = f" [{', '.join(extra)}]" if extra else ""
    return (
        f"{f['time'][11:26]} {f['node']:<14} {src} -> {dst} {proto}"
        f"{(' ' + flags) if flags else ''} {f['traffic_direction']} {what}{tail}"
    )


def _print(item: dict[str, Any], output: str) -> None:
    if "source" not in item:
        return
    click.echo(json.dumps(item, sort_keys=True) if output == "json" else flow_line(item))


def _lost_note(node: str, lost: dict[str, int]) -> None:
    missed = sum(lost.values())
    if missed:
        click.echo(
            f"{node}: {missed} flows missed (ring buffer full: {lost.get('ringFull', 0)}, "
            f"over the rate limit: {lost.get('rateLimited', 0)})",
            err=True,
        )


def _peers(ctx: Context) -> list[dict[str, Any]]:
    """The other nodes, each with the cluster's peer token its API asks for."""
    nodes = [n for n in ctx.api("GET", "/v1/nodes") if not n.get("self")]
    if nodes:
        token = ctx.api("GET", "/v1/cluster/peer-token")["token"]
        for n in nodes:
            n["token"] = token
    return nodes


def _open_peer(node: dict[str, Any], port: int, query: str, timeout: float) -> Any:
    req = urllib.request.Request(
        _peer_url(node, port, query), headers={"Authorization": f"Bearer {node['token']}"}
    )
    return urllib.request.urlopen(req, timeout=timeout)


def _peer_url(node: dict[str, Any], port: int, query: str) -> str:
    return f"http://{node['ip']}:{port}/v1/flows?{query}"


def _from_peer(node: dict[str, Any], port: int, query: str) -> dict[str, Any]:
    try:
        with _open_peer(node, port, query, 10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ApiError(e.code, json.loads(e.read() or b"{}").get("error", str(e))) from None
    except (OSError, ValueError) as e:
        raise AgentUnavailable(f"node {node['name']} ({node['ip']}:{port}): {e}") from None


def _follow_peer(node: dict[str, Any], port: int, query: str) -> Iterator[Any]:
    try:
        r = _open_peer(node, port, query, 30)
    except urllib.error.HTTPError as e:
        raise ApiError(e.code, json.loads(e.read() or b"{}").get("error", str(e))) from None
    except OSError as e:
        raise AgentUnavailable(f"node {node['name']} ({node['ip']}:{port}): {e}") from None
    # urllib has consumed the status line and headers: the rest is lines
    with r:
        for line in r:
            if line.strip():
                yield json.loads(line)


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing flows as they come.")
@click.option("--last", type=int, help="Only the newest N flows that match.")
@click.option("--since", help="From this time on: unix seconds, RFC 3339, or an age (30s, 5m).")
@click.option("--pod", help="NAMESPACE/NAME at either end.")
@click.option("--from-pod", help="NAMESPACE/NAME as the source.")
@click.option("--to-pod", help="NAMESPACE/NAME as the destination.")
@click.option("--namespace", help="Either end in this namespace.")
@click.option("--ip", help="Either end has this address.")
@click.option("--port", type=int, help="Either port is this one.")
@click.option("--protocol", type=click.Choice(["tcp", "udp", "icmp"], case_sensitive=False))
@click.option("--verdict", type=click.Choice(["forwarded", "dropped", "translated"]))
@click.option("--label", multiple=True, help="KEY=VALUE either end carries (repeatable).")
@click.option("--cluster", is_flag=True, help="Every node of the cluster, not only this one.")
@click.option(
    "--peer-port", default=DEFAULT_PEER_PORT, show_default=True, help="The nodes' healthPort."
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def observe(
    ctx: Context, follow: bool, cluster: bool, peer_port: int, output: str, **kw: Any
) -> None:
    """Flows on this node (--cluster: on every node): who talked to whom, and
    what the datapath did with it. -o json prints one JSON object per line."""
    labels = kw.pop("label")
    query = _query(**{k.replace("_", "-"): v for k, v in kw.items()}, label=",".join(labels))
    if follow:
        return _follow(ctx, cluster, peer_port, output, query + "&follow=1")
    answers = []
    try:
        answers.append(ctx.client().request("GET", f"/v1/flows?{query}"))
        for node in _peers(ctx) if cluster else []:
            try:
                answers.append(_from_peer(node, peer_port, query))
            except (AgentUnavailable, ApiError) as e:
                click.echo(f"Error: {node['name']}: {e}", err=True)
    except AgentUnavailable as e:
        fail(str(e))
    except ApiError as e:
        fail(f"agent: {e.message}")
    flows = sorted((f for a in answers for f in a["flows"]), key=lambda f: f["unixTime"])
    if kw.get("last"):
        flows = flows[-kw["last"] :]
    for f in flows:
        _print(f, output)
    for a in answers:
        node = a["flows"][0]["node"] if a["flows"] else "this node"
        _lost_note(node, a.get("lost", {}))
    if answers[0].get("captureStarted"):
        click.echo("(flow capture was off until now: flows are kept from here on)", err=True)


def _follow(ctx: Context, cluster: bool, peer_port: int, output: str, query: str) -> None:
    sources: list[tuple[str, Any]] = [
        ("this node", lambda: ctx.client().stream(f"/v1/flows?{query}"))
    ]
    if cluster:
        for node in _peers(ctx):
            sources.append((node["name"], lambda n=node: _follow_peer(n, peer_port, query)))
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump(name: str, open_stream: Any) -> None:
        try:
            for item in open_stream():
                items.put((name, item))
        except (AgentUnavailable, ApiError, OSError, ValueError) as e:
            items.put((name, {"error": str(e)}))

    for name, open_stream in sources:
        threading.Thread(target=pump, args=(name, open_stream), daemon=True).start()
    live = len(sources)
    try:
        while live:
            name, item = items.get()
            if "error" in item:
                click.echo(f"Error: {name}: {item['error']}", err=True)
                live -= 1
            elif "lost" in item:
                _lost_note(name, item["lost"])
            else:
                _print(item, output)
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
