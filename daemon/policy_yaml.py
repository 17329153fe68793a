"""Kubernetes and Cilium policy documents -> daemon/policy_model.py objects.

Validation is strict and names the document and the field path: an
unknown field, a wrong type, an operator Kubernetes does not know, an
invalid CIDR or port, or anything Porin does not enforce (L7 rules,
toFQDNs, node selectors) is a `PolicyError`. One bad document fails the
whole file, so callers validate every document before applying any.

Semantics follow the APIs: Kubernetes `policyTypes` defaulting, empty vs
absent `from`/`to`/`ports`, `endPort`, named ports, ipBlock `except` as a
strict subset; Cilium's implicit namespace for a namespaced policy's
endpoint selectors, `toPorts` with protocol ANY, `icmps`, deny sections
and `enableDefaultDeny`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from porin.daemon.policy_model import (
    ENTITIES,
    Direction,
    Kind,
    Namespace,
    Peer,
    Policy,
    PortRange,
    Rule,
)
from porin.daemon.selectors import (
    NAMESPACE_LABEL,
    NAMESPACE_NAME_LABEL,
    OPERATORS,
    Requirement,
    Selector,
    normalize_key,
)
from porin.errors import INVALID_CONFIG, PorinError

API_VERSIONS = {
    Kind.NETWORK_POLICY: "networking.k8s.io/v1",
    Kind.CILIUM_NETWORK_POLICY: "cilium.io/v2",
    Kind.CILIUM_CLUSTERWIDE: "cilium.io/v2",
    Kind.NAMESPACE: "v1",
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
# metadata a user copies from `kubectl get -o yaml`: accepted, not used
METADATA_IGNORED = {
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
}
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


class PolicyError(PorinError, ValueError):
    """A policy document is invalid; the message names document and field."""

    http_status = 400
    cni_code = INVALID_CONFIG


class NotSupported(PolicyError):
    pass


class _Doc:
    """Field access with the path of what is being read, for errors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> PolicyError:
        return PolicyError(f"{self.where}: {path}: {message}")

    def unsupported(self, path: str, message: str) -> NotSupported:
        return NotSupported(f"{self.where}: {path}: not supported by Porin: {message}")

    def obj(self, v: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.fail(path, f"must be an object, got {_type(v)}")
        for k in v:
            if not isinstance(k, str) or k not in allowed:
                raise self.fail(f"{path}.{k}", "unknown field")
        return v

    def lst(self, v: Any, path: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(path, f"must be a list, got {_type(v)}")
        return v

    def string(self, v: Any, path: str) -> str:
        if not isinstance(v, str):
            raise self.fail(path, f"must be a string, got {_type(v)}")
        return v


def _type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(v), type(v).__name__
    )


# ---------- documents ----------


def parse_documents(docs: list[Any], source: str = "input") -> list[Policy | Namespace]:
    """Every document parsed, or a PolicyError for the first bad one."""
    out: list[Policy | Namespace] = []
    flat: list[tuple[str, Any]] = []
    for i, doc in enumerate(docs):
        where = f"{source}: document {i + 1}"
        if doc is None:
            continue  # an empty document between --- separators
        if isinstance(doc, dict) and doc.get("kind") == "List" and doc.get("apiVersion") == "v1":
            for j, item in enumerate(_Doc(where).lst(doc.get("items"), "items")):
                flat.append((f"{where}: items[{j}]", item))
            continue
        flat.append((where, doc))
    seen: dict[str, str] = {}
    for where, doc in flat:
        obj = parse_document(doc, where)
        key = obj.key if isinstance(obj, Policy) else f"Namespace//{obj.name}"
        if key in seen:
            raise PolicyError(f"{where}: {key} is also defined by {seen[key]}")
        seen[key] = where
        out.append(obj)
    return out


def parse_document(doc: Any, where: str) -> Policy | Namespace:
    d = _Doc(where)
    if not isinstance(doc, dict):
        raise d.fail("(document)", f"must be an object, got {_type(doc)}")
    kind = doc.get("kind")
    try:
        k = Kind(kind)
    except ValueError:
        raise d.fail(
            "kind", f"unknown kind {kind!r} (one of {', '.join(x.value for x in Kind)})"
        ) from None
    if doc.get("apiVersion") != API_VERSIONS[k]:
        raise d.fail(
            "apiVersion",
            f"{k.value} needs apiVersion {API_VERSIONS[k]}, got {doc.get('apiVersion')!r}",
        )
    d.where = f"{where} ({k.value} {_name_hint(doc)})"
    if k == Kind.NAMESPACE:
        d.obj(doc, "", {"apiVersion", "kind", "metadata", "spec", "status"})
        name, _, labels = _metadata(d, doc, namespaced=False)
        labels = dict(labels)
        labels[NAMESPACE_NAME_LABEL] = name
        return Namespace(name, labels, doc)
    top = {"apiVersion", "kind", "metadata", "spec", "status"}
    if k != Kind.NETWORK_POLICY:
        top.add("specs")
    d.obj(doc, "", top)
    name, namespace, _ = _metadata(d, doc, namespaced=k != Kind.CILIUM_CLUSTERWIDE)
    if k == Kind.NETWORK_POLICY:
        return _k8s_policy(d, doc, name, namespace)
    return _cilium_policy(d, doc, k, name, namespace)


def _name_hint(doc: dict[str, Any]) -> str:
    md = doc.get("metadata")
    if isinstance(md, dict) and isinstance(md.get("name"), str):
        ns = md.get("namespace")
        return f"{ns}/{md['name']}" if isinstance(ns, str) else md["name"]
    return "(unnamed)"


def _metadata(d: _Doc, doc: dict[str, Any], namespaced: bool) -> tuple[str, str, dict[str, str]]:
    md = d.obj(
        doc.get("metadata"),
        "metadata",
        {"name", "namespace", "labels", "annotations"} | METADATA_IGNORED,
    )
    name = md.get("name")
    if not name:
        raise d.fail("metadata.name", "is required")
    name = d.string(name, "metadata.name")
    if not DNS_SUBDOMAIN.match(name):
        raise d.fail("metadata.name", f"{name!r} is not a valid name (lowercase DNS subdomain)")
    namespace = ""
    if namespaced:
        namespace = d.string(md.get("namespace") or "default", "metadata.namespace")
        if not DNS_LABEL.match(namespace):
            raise d.fail("metadata.namespace", f"{namespace!r} is not a valid namespace name")
    elif "namespace" in md and md["namespace"]:
        raise d.fail("metadata.namespace", "this kind is not namespaced")
    labels = _string_map(d, md.get("labels"), "metadata.labels", label_values=True)
    _string_map(d, md.get("annotations"), "metadata.annotations", label_values=False)
    return name, namespace, labels


def _string_map(d: _Doc, v: Any, path: str, label_values: bool) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise d.fail(path, f"must be an object, got {_type(v)}")
    out = {}
    for k, x in v.items():
        if not isinstance(k, str) or not k:
            raise d.fail(path, f"key {k!r} must be a non-empty string")
        if not isinstance(x, str):
            raise d.fail(f"{path}.{k}", f"must be a string, got {_type(x)}")
        if label_values and not LABEL_VALUE.match(x):
            raise d.fail(f"{path}.{k}", f"{x!r} is not a valid label value")
        out[k] = x
    return out


# ---------- selectors, ports, CIDRs ----------


def parse_selector(d: _Doc, v: Any, path: str) -> Selector:
    s = d.obj(v, path, {"matchLabels", "matchExpressions"})
    labels = _string_map(d, s.get("matchLabels"), f"{path}.matchLabels", label_values=True)
    reqs = []
    for i, e in enumerate(d.lst(s.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        e = d.obj(e, p, {"key", "operator", "values"})
        key = d.string(e.get("key"), f"{p}.key")
        if not key:
            raise d.fail(f"{p}.key", "must not be empty")
        op = e.get("operator")
        if op not in OPERATORS:
            raise d.fail(
                f"{p}.operator", f"{op!r} is not a valid operator (one of {', '.join(OPERATORS)})"
            )
        values = [
            d.string(x, f"{p}.values[{j}]")
            for j, x in enumerate(d.lst(e.get("values"), f"{p}.values"))
        ]
        if op in ("In", "NotIn") and not values:
            raise d.fail(f"{p}.values", f"must not be empty with operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise d.fail(f"{p}.values", f"must be empty with operator {op}")
        reqs.append(Requirement(normalize_key(key), op, tuple(values)))
    return Selector(tuple(sorted((normalize_key(k), x) for k, x in labels.items())), tuple(reqs))


def parse_cidr(d: _Doc, v: Any, path: str) -> str:
    s = d.string(v, path)
    try:
        return str(ipaddress.ip_network(s, strict=False))
    except ValueError:
        raise d.fail(path, f"{s!r} is not a valid CIDR") from None


def parse_cidr_set(d: _Doc, cidr: Any, excepts: Any, path: str, except_name: str) -> Peer:
    net = parse_cidr(d, cidr, f"{path}.cidr")
    outer = ipaddress.ip_network(net)
    out = []
    for i, e in enumerate(d.lst(excepts, f"{path}.{except_name}")):
        p = f"{path}.{except_name}[{i}]"
        inner = ipaddress.ip_network(parse_cidr(d, e, p))
        if inner.version != outer.version or not inner.subnet_of(outer) or inner == outer:
            raise d.fail(p, f"{inner} must be a strict subset of {net}")
        out.append(str(inner))
    return Peer(cidr=net, excepts=tuple(out))


def _port_number(d: _Doc, v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise d.fail(path, f"must be a port number 1-65535, got {v!r}")
    return v


def _protocol(d: _Doc, v: Any, path: str, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise d.fail(path, f"{v!r} is not a supported protocol (one of {', '.join(allowed)})")
    return v


# ---------- Kubernetes NetworkPolicy ----------


def _k8s_policy(d: _Doc, doc: dict[str, Any], name: str, namespace: str) -> Policy:
    spec = d.obj(doc.get("spec"), "spec", {"podSelector", "policyTypes", "ingress", "egress"})
    if "podSelector" not in spec:
        raise d.fail(
            "spec.podSelector", "is required (use {} to select every pod of the namespace)"
        )
    subject = parse_selector(d, spec["podSelector"], "spec.podSelector")
    types = d.lst(spec.get("policyTypes"), "spec.policyTypes")
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            raise d.fail(f"spec.policyTypes[{i}]", f"{t!r} must be Ingress or Egress")
    ingress = d.lst(spec.get("ingress"), "spec.ingress")
    egress = d.lst(spec.get("egress"), "spec.egress")
    if not types:  # the API server's defaulting
        types = ["Ingress"] + (["Egress"] if egress else [])
    isolates = frozenset(Direction(t.lower()) for t in types)
    rules: list[Rule] = []
    for direction, items, peer_key in (
        (Direction.INGRESS, ingress, "from"),
        (Direction.EGRESS, egress, "to"),
    ):
        if direction not in isolates:
            continue  # rules of a direction the policy does not cover are ignored
        for i, r in enumerate(items):
            p = f"spec.{direction}[{i}]"
            r = d.obj(r, p, {peer_key, "ports"})
            peers: tuple[Peer, ...] | None = None
            if r.get(peer_key):  # absent or empty: every peer
                peers = tuple(
                    _k8s_peer(d, x, f"{p}.{peer_key}[{j}]", namespace)
                    for j, x in enumerate(d.lst(r[peer_key], f"{p}.{peer_key}"))
                )
            ports = tuple(
                _k8s_port(d, x, f"{p}.ports[{j}]")
                for j, x in enumerate(d.lst(r.get("ports"), f"{p}.ports"))
            )
            rules.append(Rule(direction, False, peers, ports, f"{direction}[{i}]"))
    return Policy(Kind.NETWORK_POLICY, namespace, name, subject, isolates, rules, doc)


def _k8s_peer(d: _Doc, v: Any, path: str, namespace: str) -> Peer:
    v = d.obj(v, path, {"podSelector", "namespaceSelector", "ipBlock"})
    if not v:
        raise d.fail(path, "must set podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in v:
        if len(v) > 1:
            raise d.fail(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        b = d.obj(v["ipBlock"], f"{path}.ipBlock", {"cidr", "except"})
        if "cidr" not in b:
            raise d.fail(f"{path}.ipBlock.cidr", "is required")
        return parse_cidr_set(d, b["cidr"], b.get("except"), f"{path}.ipBlock", "except")
    pods = parse_selector(d, v.get("podSelector"), f"{path}.podSelector")
    if "namespaceSelector" in v:
        ns_sel = parse_selector(d, v["namespaceSelector"], f"{path}.namespaceSelector")
        return Peer(pods=pods, namespace_selector=ns_sel)
    return Peer(pods=pods, namespace=namespace)


def _k8s_port(d: _Doc, v: Any, path: str) -> PortRange:
    v = d.obj(v, path, {"protocol", "port", "endPort"})
    proto = _protocol(d, v.get("protocol", "TCP"), f"{path}.protocol", ("TCP", "UDP", "SCTP"))
    port = v.get("port")
    end = v.get("endPort")
    if port is None:
        if end is not None:
            raise d.fail(f"{path}.endPort", "needs a numeric port")
        return PortRange(proto)
    if isinstance(port, str):
        if end is not None:
            raise d.fail(f"{path}.endPort", "cannot be used with a named port")
        if port.isdigit():
            return PortRange(proto, _port_number(d, int(port), f"{path}.port"))
        if not PORT_NAME.match(port):
            raise d.fail(f"{path}.port", f"{port!r} is neither a port number nor a valid port name")
        return PortRange(proto, name=port)
    number = _port_number(d, port, f"{path}.port")
    if end is None:
        return PortRange(proto, number)
    end = _port_number(d, end, f"{path}.endPort")
    if end < number:
        raise d.fail(f"{path}.endPort", f"{end} is below port {number}")
    return PortRange(proto, number, end if end != number else 0)


# ---------- CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy ----------

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


def _cilium_policy(d: _Doc, doc: dict[str, Any], kind: Kind, name: str, namespace: str) -> Policy:
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
    d: _Doc, r: Any, path: str, direction: Direction, deny: bool, kind: Kind, namespace: str
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


def _cilium_port(d: _Doc, v: Any, path: str) -> list[PortRange]:
    v = d.obj(v, path, {"port", "endPort", "protocol"})
    proto = _protocol(
        d, v.get("protocol", "ANY"), f"{path}.protocol", ("TCP", "UDP", "SCTP", "ANY")
    )
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
            end = _port_number(d, end, f"{path}.endPort")
            if end < number:
                raise d.fail(f"{path}.endPort", f"{end} is below port {number}")
        return [PortRange(p, number, end if end and end != number else 0) for p in protos]
    if not PORT_NAME.match(port):
        raise d.fail(f"{path}.port", f"{port!r} is neither a port number nor a valid port name")
    if end is not None:
        raise d.fail(f"{path}.endPort", "cannot be used with a named port")
    return [PortRange(p, name=port) for p in protos]
