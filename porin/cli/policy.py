"""porin apply / delete / policy ...: network policy, kubectl-style.

`porin apply -f FILE` sends every document of FILE (YAML or JSON, `-` for
stdin, several with ---) to the agent, which validates all of them and
applies all or none.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

import click
import yaml

from porin.cli.context import Context, fail, open_map
from porin.cli.output import output_option, print_json, print_table


def read_documents(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        fail(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}")
    return []


def _source(path: str) -> str:
    return "stdin" if path == "-" else path


@click.command("apply")
@click.option("-f", "--filename", "path", required=True, help="YAML or JSON file, - for stdin.")
@output_option
@click.pass_obj
def apply(ctx: Context, path: str, output: str) -> None:
    """Create or update policies and namespaces (all or nothing)."""
    docs = read_documents(path)
    if not docs:
        fail(f"{_source(path)}: no documents")
    res = ctx.api("POST", "/v1/policies/apply", {"documents": docs, "source": _source(path)})
    if output == "json":
        return print_json(res)
    for what in ("created", "configured", "unchanged"):
        for name in res.get(what, []):
            click.echo(f"{name} {what}")
    if res.get("created") or res.get("configured"):
        click.echo(f"enforced on this node in {res.get('enforcedMs', 0):.0f} ms")


@click.command("delete")
@click.option("-f", "--filename", "path", required=True, help="YAML or JSON file, - for stdin.")
@click.pass_obj
def delete(ctx: Context, path: str) -> None:
    """Delete the policies and namespaces a file defines (all must exist)."""
    docs = read_documents(path)
    res = ctx.api("POST", "/v1/policies/delete", {"documents": docs, "source": _source(path)})
    for name in res.get("deleted", []):
        click.echo(f"{name} deleted")


@click.group()
def policy() -> None:
    """Network policies (Kubernetes NetworkPolicy, CiliumNetworkPolicy)."""


def _split(ref: str) -> tuple[str, str]:
    ns, sep, name = ref.rpartition("/")
    return (ns if sep else "-"), name


@policy.command("list")
@output_option
@click.pass_obj
def policy_list(ctx: Context, output: str) -> None:
    """Every policy: what it selects, its revision and hits."""
    pols = ctx.api("GET", "/v1/policies")
    if output == "json":
        return print_json(pols)
    print_table(
        ("NAMESPACE", "NAME", "KIND", "ENDPOINTS", "RULES", "REVISION", "HITS"),
        [
            (
                p["namespace"] or "-",
                p["name"],
                p["kind"],
                ",".join(map(str, p["selectedEndpoints"])) or "-",
                p["rules"],
                p["revision"],
                p["hits"],
            )
            for p in pols
        ],
    )


@policy.command("get")
@click.argument("ref", metavar="NAMESPACE/NAME")
@click.option("--kind", help="NetworkPolicy, CiliumNetworkPolicy, ... when names clash.")
@output_option
@click.pass_obj
def policy_get(ctx: Context, ref: str, kind: str | None, output: str) -> None:
    """One policy as stored, and per rule what it selects and counted."""
    ns, name = _split(ref)
    p = ctx.api("GET", f"/v1/policies/{ns}/{name}" + (f"?kind={kind}" if kind else ""))
    if output == "json":
        return print_json(p)
    click.echo(f"{p['kind']} {p['namespace'] + '/' if p['namespace'] else ''}{p['name']}")
    click.echo(f"revision {p['revision']}, isolates {', '.join(p['isolates']) or 'nothing'}")
    click.echo(f"selects endpoints: {', '.join(map(str, p['selectedEndpoints'])) or 'none'}")
    print_table(
        ("RULE", "SECTION", "ENDPOINTS", "PACKETS", "BYTES", "RULE TEXT"),
        [
            (
                r["id"],
                r["section"],
                ",".join(map(str, r["endpoints"])) or "-",
                r["packets"],
                r["bytes"],
                r["description"],
            )
            for r in p["rules"]
        ],
    )
    click.echo("---")
    click.echo(yaml.safe_dump(p["document"], sort_keys=False).rstrip())


@policy.command("delete")
@click.argument("ref", metavar="NAMESPACE/NAME", required=False)
@click.option("--all", "all_", is_flag=True, help="Delete every policy.")
@click.option("--kind", help="NetworkPolicy, CiliumNetworkPolicy, ... when names clash.")
@click.pass_obj
def policy_delete(ctx: Context, ref: str | None, all_: bool, kind: str | None) -> None:
    """Delete one policy, or --all."""
    if all_ == bool(ref):
        fail("give NAMESPACE/NAME or --all")
    if all_:
        res = ctx.api("DELETE", "/v1/policies")
    else:
        ns, name = _split(ref or "")
        res = ctx.api("DELETE", f"/v1/policies/{ns}/{name}" + (f"?kind={kind}" if kind else ""))
    for k in res["deleted"]:
        click.echo(f"{k} deleted")


def resolve_address(ctx: Context, ref: str, eps: list[dict[str, Any]] | None = None) -> str:
    """An IPv4 address, or the address of a local pod (NAMESPACE/NAME, id, container id)."""
    try:
        return str(ipaddress.IPv4Address(ref))
    except ValueError:
        pass
    return resolve_endpoint(ctx, ref, eps)["ipv4"].split("/")[0]


def resolve_endpoint(
    ctx: Context, ref: str, eps: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """ENDPOINT: its id, container id (or a unique prefix) or NAMESPACE/NAME."""
    eps = eps if eps is not None else ctx.api("GET", "/v1/endpoints")
    if ref.isdigit():
        hits = [e for e in eps if e["id"] == int(ref)]
    elif "/" in ref:
        ns, _, name = ref.partition("/")
        hits = [
            e
            for e in eps
            if _label(e, "io.kubernetes.pod.name") == name
            and (_label(e, "io.kubernetes.pod.namespace") or "default") == ns
        ]
    else:
        hits = [e for e in eps if e["containerID"].startswith(ref)]
    if not hits:
        fail(f"no endpoint {ref!r} on this node (give an id, a container id or NAMESPACE/NAME)")
    if len(hits) > 1:
        fail(f"{ref!r} matches endpoints {', '.join(str(e['id']) for e in hits)}")
    return hits[0]


def _label(ep: dict[str, Any], key: str) -> str | None:
    labels = ep.get("labels") or {}
    return labels.get(key, labels.get("k8s:" + key))


@policy.command("explain")
@click.option("--from", "src", required=True, help="POD (NAMESPACE/NAME, id) or IP.")
@click.option("--to", "dst", required=True, help="POD (NAMESPACE/NAME, id) or IP.")
@click.option("--port", required=True, help="PORT/PROTO: 80/tcp, 53/udp, 8/icmp (ICMP type).")
@output_option
@click.pass_obj
def policy_explain(ctx: Context, src: str, dst: str, port: str, output: str) -> None:
    """The verdict the live maps give a new connection, and why."""
    num, _, proto = port.partition("/")
    if not num.isdigit():
        fail(f"--port {port!r}: give PORT/PROTO, e.g. 80/tcp")
    eps = ctx.api("GET", "/v1/endpoints")
    a, b = resolve_address(ctx, src, eps), resolve_address(ctx, dst, eps)
    res = ctx.api("GET", f"/v1/policy/explain?from={a}&to={b}&port={num}&protocol={proto or 'tcp'}")
    if output == "json":
        return print_json(res)
    rules = res["rules"]["rules"]
    selected = res["rules"]["selectedBy"]
    click.echo(f"{a} -> {b} {num}/{proto or 'tcp'}: {res['verdict']}")
    if res.get("note"):
        click.echo(f"  {res['note']}")
    for c in res["checks"]:
        click.echo(
            f"  {c['direction']} of endpoint {c['endpoint']} "
            f"(policy revision {c['policyRevision']}): {c['verdict']}"
        )
        if not c["enforced"]:
            click.echo(f"    {c['why']}")
            continue
        by = selected.get(str(c["endpoint"]), {}).get(c["direction"], [])
        click.echo(f"    isolated by: {', '.join(by) or '?'}")
        for lk in c["lookups"]:
            m = lk["match"]
            if m is None:
                click.echo(f"    lookup {lk['as']} {lk['identity']}: no entry")
            else:
                e = m.get("entry", {})
                click.echo(
                    f"    lookup {lk['as']} {lk['identity']}: {'deny' if m['deny'] else 'allow'} "
                    f"proto {e.get('protocol', '?') or 'any'} ports {e.get('ports', '?')} "
                    f"rule {m['ruleId']} {describe_rule(rules, m['ruleId'])}"
                )
        click.echo(
            f"    => {c['why']}"
            + (f": {describe_rule(rules, c['ruleId'])}" if c.get("ruleId") else "")
        )


def describe_rule(rules: dict[str, Any], rule_id: int) -> str:
    r = rules.get(str(rule_id))
    if not r:
        return f"(rule {rule_id}: not known to this agent)"
    return f"{r['kind']} {r['policy']} {r['section']}".strip()


# ---------------- porin bpf policy ----------------


@click.group("policy")
def bpf_policy() -> None:
    """The policy map (read directly)."""


@bpf_policy.command("get")
@click.argument("ref", metavar="ENDPOINT")
@output_option
@click.pass_obj
def bpf_policy_get(ctx: Context, ref: str, output: str) -> None:
    """An endpoint's policy entries, as the datapath has them."""
    from porin.maps.policy import PolicyMap

    ep = resolve_endpoint(ctx, ref)
    table = ctx.api("GET", "/v1/policies/rules")
    idents = {i["id"]: i["labels"] for i in ctx.api("GET", "/v1/identities")}
    cidrs = table.get("cidrIdentities", {})
    with open_map(ctx, PolicyMap) as m:
        entries = [(k, v) for k, v in m.entries() if k.ep_id == ep["id"]]
    rows = []
    for k, v in sorted(
        entries, key=lambda kv: (kv[0].direction, kv[0].identity, kv[0].proto, kv[0].port)
    ):
        lo, hi = k.port_range
        if str(k.identity) in cidrs:
            who = f"cidr:{cidrs[str(k.identity)]}"
        elif k.identity == 0:
            who = "any"
        else:
            who = (
                ",".join(
                    f"{a}={b}" if b else a for a, b in sorted(idents.get(k.identity, {}).items())
                )
                or "?"
            )
        rows.append(
            {
                "direction": k.direction,
                "identity": k.identity,
                "labels": who,
                "protocol": {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}.get(
                    k.proto, k.proto
                ),
                "ports": "any"
                if not k.proto or not k.port_bits
                else (str(lo) if lo == hi else f"{lo}-{hi}"),
                "verdict": "deny" if v.flags & 1 else "allow",
                "rule": v.rule_id,
                "policy": describe_rule(table["rules"], v.rule_id),
                "packets": v.packets,
                "bytes": v.bytes,
            }
        )
    if output == "json":
        return print_json(rows)
    print_table(
        (
            "DIRECTION",
            "IDENTITY",
            "LABELS",
            "PROTO",
            "PORTS",
            "VERDICT",
            "RULE",
            "POLICY",
            "PACKETS",
            "BYTES",
        ),
        [tuple(r.values()) for r in rows],
    )


# ---------------- porin endpoint label ----------------


@click.command("label")
@click.argument("ref", metavar="ENDPOINT")
@click.option("--set", "set_", help="k=v[,k=v]: labels to set.")
@click.option("--remove", multiple=True, help="A label key to remove (repeatable).")
@output_option
@click.pass_obj
def endpoint_label(
    ctx: Context, ref: str, set_: str | None, remove: tuple[str, ...], output: str
) -> None:
    """Change a running endpoint's labels (ENDPOINT: id, container id, NAMESPACE/NAME)."""
    labels = {}
    for part in (set_ or "").split(","):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            fail(f"--set {part!r}: give key=value")
        labels[k] = v
    if not labels and not remove:
        fail("give --set k=v and/or --remove KEY")
    ep = resolve_endpoint(ctx, ref)
    res = ctx.api(
        "PATCH", f"/v1/endpoints/{ep['id']}/labels", {"set": labels, "remove": list(remove)}
    )
    if output == "json":
        return print_json(res)
    click.echo(f"endpoint {res['id']}: identity {res['identity']}, labels {res['labels']}")
