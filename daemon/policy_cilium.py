"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy documents ->
daemon/policy_model.py objects, with Cilium's semantics: the implicit
namespace of a namespaced policy's endpoint selectors, `toPorts` with
protocol ANY, `icmps`, deny sections and `enableDefaultDeny`; L7, toFQDNs,
node selectors and the like refused as not supported."""

from __future__ import annotations

from typing import Any

from porin.daemon.policy_fields import (
    PORT_NAME,
    Doc,
    parse_cidr,
    parse_cidr_set,
    parse_selector,
    port_number,
    protocol,
)
from porin.daemon.policy_model import ENTITIES, Direction, Kind, Peer, Policy, PortRange, Rule
from porin.daemon.selectors import NAMESPACE_LABEL, Selector

ICMP_TYPES = {
    "EchoReply": 0,
    "DestinationUnreachable": 3,
    "Redirect": 5,
    "Echo": 8,
    "EchoRequest": 8,
    "RouterAdvertisement": 9,
    "RouterSelection": 10,
    "TimeExceeded": 11,
    "ParameterProblem": 12,
    "Timestamp": 13,
    "TimestampReply": 14,
    "Photuris": 40,
    "ExtendedEchoRequest": 42,
    "ExtendedEchoReply": 43,
}


_CILIUM_RULE = {
    "endpointSelector",
    "nodeSelector",
    "ingress",
    "egress",
    "ingressDeny",
    "egressDeny",
    "description",
    "labels",
    "enableDefaultDeny",
}
_PEER_FIELDS = {
    Direction.INGRESS: ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
    Direction.EGRESS: ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"),
}
_UNSUPPORTED = {
    "fromRequires": "requirements",
    "toRequires": "requirements",
    "fromGroups": "cloud groups",
    "toGroups": "cloud groups",
    "fromNodes": "node selectors",
    "toNodes": "node selectors",
    "toServices": "service selectors",
    "toFQDNs": "DNS-based rules (toFQDNs)",
    "authentication": "mutual authentication",
}


def cilium_policy(d: Doc, doc: dict[str, Any], kind: Kind, name: str, namespace: str) -> Policy:
    if "spec" in doc and "specs" in doc:
        specs = [doc["spec"]] + d.lst(doc["specs"], "specs")
        paths = ["spec"] + [f"specs[{i}]" for i in range(len(specs) - 1)]
    elif "specs" in doc:
        specs = d.lst(doc["specs"], "specs")
        paths = [f"specs[{i}]" for i in range(len(specs))]
    elif "spec" in doc:
        specs, paths = [doc["spec"]], ["spec"]
    else:
        raise d.fail("spec", "is required")
    subject: Selector | None = None
    isolates: set[Direction] = set()
    rules: list[Rule] = []
    for spec, path in zip(specs, paths, strict=True):
        spec = d.obj(spec, path, _CILIUM_RULE)
        if "nodeSelector" in spec:
            raise d.unsupported(f"{path}.nodeSelector", "host policies (nodeSelector)")
        if "endpointSelector" not in spec:
            raise d.fail(f"{path}.endpointSelector", "is required")
        sel = parse_selector(d, spec["endpointSelector"], f"{path}.endpointSelector")
        if subject is not None and sel != subject:
            raise d.unsupported(
                path,
                "specs with different endpointSelectors in one object "
                "(split it into one policy per selector)",
            )
        subject = sel
        d.string(spec.get("description", ""), f"{path}.description")
        dd = d.obj(
            spec.get("enableDefaultDeny"), f"{path}.enableDefaultDeny", {"ingress", "egress"}
        )
        for direction in Direction:
            for deny in (False, True):
                section = f"{direction}{'Deny' if deny else ''}"
                items = d.lst(spec.get(section), f"{path}.{section}")
                default_deny = dd.get(direction.value, True)
                if not isinstance(default_deny, bool):
                    raise d.fail(f"{path}.enableDefaultDeny.{direction}", "must be a boolean")
                if items and default_deny:
                    isolates.add(direction)
                for i, r in enumerate(items):
                    rules.extend(
                        _cilium_rule(
                            d, r, f"{path}.{section}[{i}]", direction, deny, kind, namespace
                        )
                    )
    assert subject is not None
    return Policy(kind, namespace, name, subject, frozenset(isolates), rules, doc)


def _cilium_rule(
    d: Doc, r: Any, path: str, direction: Direction, deny: bool, kind: Kind, namespace: str
) -> list[Rule]:
    peer_fields = _PEER_FIELDS[direction]
    allowed = set(peer_fields) | {"toPorts", "icmps"} | set(_UNSUPPORTED)
    r = d.obj(r, path, allowed)
    for k in r:
        if k in _UNSUPPORTED:
            raise d.unsupported(f"{path}.{k}", _UNSUPPORTED[k])
    section = path.rsplit(".", 1)[-1]
    peers: list[Peer] = []
    has_l3 = False
    ep_key, cidr_key, set_key, ent_key = peer_fields
    if ep_key in r:
        has_l3 = True
        for j, s in enumerate(d.lst(r[ep_key], f"{path}.{ep_key}")):
            sel = parse_selector(d, s, f"{path}.{ep_key}[{j}]")
            # a namespaced policy's selectors mean its namespace unless they say otherwise
            ns = (
                namespace
                if kind == Kind.CILIUM_NETWORK_POLICY and not sel.mentions(NAMESPACE_LABEL)
                else None
            )
            peers.append(Peer(pods=sel, namespace=ns, cilium=True))
    if cidr_key in r:
        has_l3 = True
        for j, c in enumerate(d.lst(r[cidr_key], f"{path}.{cidr_key}")):
            peers.append(Peer(cidr=parse_cidr(d, c, f"{path}.{cidr_key}[{j}]")))
    if set_key in r:
        has_l3 = True
        for j, c in enumerate(d.lst(r[set_key], f"{path}.{set_key}")):
            p = f"{path}.{set_key}[{j}]"
            c = d.obj(c, p, {"cidr", "except", "cidrGroupRef"})
            if "cidrGroupRef" in c:
                raise d.unsupported(f"{p}.cidrGroupRef", "CiliumCIDRGroup references")
            if "cidr" not in c:
                raise d.fail(f"{p}.cidr", "is required")
            peers.append(parse_cidr_set(d, c["cidr"], c.get("except"), p, "except"))
    if ent_key in r:
        has_l3 = True
        for j, e in enumerate(d.lst(r[ent_key], f"{path}.{ent_key}")):
            if e not in ENTITIES:
                raise d.fail(
                    f"{path}.{ent_key}[{j}]",
                    f"{e!r} is not a supported entity (one of {', '.join(ENTITIES)})",
                )
            peers.append(Peer(entity=e))
    ports: list[PortRange] = []
    for j, tp in enumerate(d.lst(r.get("toPorts"), f"{path}.toPorts")):
        p = f"{path}.toPorts[{j}]"
        tp = d.obj(
            tp, p, {"ports", "rules", "listener", "originatingTLS", "terminatingTLS", "serverNames"}
        )
        for k in ("rules", "listener", "originatingTLS", "terminatingTLS", "serverNames"):
            if k in tp:
                raise d.unsupported(f"{p}.{k}", "L7 and TLS rules (Porin enforces L3/L4 only)")
        tps = d.lst(tp.get("ports"), f"{p}.ports")
        if not tps:
            raise d.fail(f"{p}.ports", "must list at least one port")
        for k, pp in enumerate(tps):
            ports.extend(_cilium_port(d, pp, f"{p}.ports[{k}]"))
    for j, ic in enumerate(d.lst(r.get("icmps"), f"{path}.icmps")):
        p = f"{path}.icmps[{j}]"
        ic = d.obj(ic, p, {"fields"})
        for k, fld in enumerate(d.lst(ic.get("fields"), f"{p}.fields")):
            q = f"{p}.fields[{k}]"
            fld = d.obj(fld, q, {"type", "family"})
            family = fld.get("family", "IPv4")
            if family not in ("IPv4", "IPv6"):
                raise d.fail(f"{q}.family", f"{family!r} must be IPv4 or IPv6")
            t = fld.get("type")
            if isinstance(t, str) and t in ICMP_TYPES:
                t = ICMP_TYPES[t]
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 255:
                raise d.fail(
                    f"{q}.type",
                    f"{fld.get('type')!r} is not an ICMP type "
                    "(0-255 or a name such as EchoRequest)",
                )
            if family == "IPv4":  # Porin has no IPv6 datapath: an ICMPv6 type allows nothing
                ports.append(PortRange("ICMP", t))
    has_l4 = "toPorts" in r or "icmps" in r
    if not has_l3 and not has_l4:
        return []  # `{}`: selects and isolates, allows nothing (Cilium's default-deny idiom)
    return [Rule(direction, deny, tuple(peers) if has_l3 else None, tuple(ports), section)]


def _cilium_port(d: Doc, v: Any, path: str) -> list[PortRange]:
    v = d.obj(v, path, {"port", "endPort", "protocol"})
    proto = protocol(d, v.get("protocol", "ANY"), f"{path}.protocol", ("TCP", "UDP", "SCTP", "ANY"))
    protos = ("TCP", "UDP", "SCTP") if proto == "ANY" else (proto,)
    port = v.get("port", "0")
    if isinstance(port, int) and not isinstance(port, bool):
        port = str(port)
    port = d.string(port, f"{path}.port")
    end = v.get("endPort")
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise d.fail(f"{path}.port", f"{number} is not a port number (0-65535)")
        if end is not None:
            if number == 0:
                raise d.fail(f"{path}.endPort", "needs a port")
            end = port_number(d, end, f"{path}.endPort")
            if end < number:
                raise d.fail(f"{path}.endPort", f"{end} is below port {number}")
        return [PortRange(p, number, end if end and end != number else 0) for p in protos]
    if not PORT_NAME.match(port):
        raise d.fail(f"{path}.port", f"{port!r} is neither a port number nor a valid port name")
    if end is not None:
        raise d.fail(f"{path}.endPort", "cannot be used with a named port")
    return [PortRange(p, name=port) for p in protos]
