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

This module reads documents, metadata and Kubernetes NetworkPolicy; the
Cilium kinds are daemon/policy_cilium.py's, the shared field parsers
daemon/policy_fields.py's.
"""

from __future__ import annotations

from typing import Any

from porin.daemon.policy_cilium import cilium_policy
from porin.daemon.policy_fields import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    PORT_NAME,
    Doc,
    NotSupported,
    PolicyError,
    parse_cidr_set,
    parse_selector,
    port_number,
    protocol,
    string_map,
    type_name,
)
from porin.daemon.policy_model import Direction, Kind, Namespace, Peer, Policy, PortRange, Rule
from porin.daemon.selectors import NAMESPACE_NAME_LABEL

__all__ = ["NotSupported", "PolicyError", "parse_document", "parse_documents"]

API_VERSIONS = {
    Kind.NETWORK_POLICY: "networking.k8s.io/v1",
    Kind.CILIUM_NETWORK_POLICY: "cilium.io/v2",
    Kind.CILIUM_CLUSTERWIDE: "cilium.io/v2",
    Kind.NAMESPACE: "v1",
}
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
            for j, item in enumerate(Doc(where).lst(doc.get("items"), "items")):
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
    d = Doc(where)
    if not isinstance(doc, dict):
        raise d.fail("(document)", f"must be an object, got {type_name(doc)}")
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
    return cilium_policy(d, doc, k, name, namespace)


def _name_hint(doc: dict[str, Any]) -> str:
    md = doc.get("metadata")
    if isinstance(md, dict) and isinstance(md.get("name"), str):
        ns = md.get("namespace")
        return f"{ns}/{md['name']}" if isinstance(ns, str) else md["name"]
    return "(unnamed)"


def _metadata(d: Doc, doc: dict[str, Any], namespaced: bool) -> tuple[str, str, dict[str, str]]:
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
        ns = md.get("namespace")
        namespace = d.string("default" if ns is None or ns == "" else ns, "metadata.namespace")
        if not DNS_LABEL.match(namespace):
            raise d.fail("metadata.namespace", f"{namespace!r} is not a valid namespace name")
    elif "namespace" in md and md["namespace"]:
        raise d.fail("metadata.namespace", "this kind is not namespaced")
    labels = string_map(d, md.get("labels"), "metadata.labels", label_values=True)
    string_map(d, md.get("annotations"), "metadata.annotations", label_values=False)
    return name, namespace, labels


# ---------- Kubernetes NetworkPolicy ----------


def _k8s_policy(d: Doc, doc: dict[str, Any], name: str, namespace: str) -> Policy:
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
            listed = d.lst(r.get(peer_key), f"{p}.{peer_key}")
            if listed:  # absent or empty: every peer
                peers = tuple(
                    _k8s_peer(d, x, f"{p}.{peer_key}[{j}]", namespace) for j, x in enumerate(listed)
                )
            ports = tuple(
                _k8s_port(d, x, f"{p}.ports[{j}]")
                for j, x in enumerate(d.lst(r.get("ports"), f"{p}.ports"))
            )
            rules.append(Rule(direction, False, peers, ports, f"{direction}[{i}]"))
    return Policy(Kind.NETWORK_POLICY, namespace, name, subject, isolates, rules, doc)


def _k8s_peer(d: Doc, v: Any, path: str, namespace: str) -> Peer:
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


def _k8s_port(d: Doc, v: Any, path: str) -> PortRange:
    v = d.obj(v, path, {"protocol", "port", "endPort"})
    proto = protocol(d, v.get("protocol", "TCP"), f"{path}.protocol", ("TCP", "UDP", "SCTP"))
    port = v.get("port")
    end = v.get("endPort")
    if port is None:
        if end is not None:
            raise d.fail(f"{path}.endPort", "needs a numeric port")
        return PortRange(proto)
    if isinstance(port, str):
        if end is not None:
            raise d.fail(f"{path}.endPort", "cannot be used with a named port")
        if port.isdigit():  # the API server refuses it too (a port name needs a letter)
            raise d.fail(
                f"{path}.port", f"{port!r} is a port name without a letter: write {port} unquoted"
            )
        if not PORT_NAME.match(port):
            raise d.fail(f"{path}.port", f"{port!r} is neither a port number nor a valid port name")
        return PortRange(proto, name=port)
    number = port_number(d, port, f"{path}.port")
    if end is None:
        return PortRange(proto, number)
    end = port_number(d, end, f"{path}.endPort")
    if end < number:
        raise d.fail(f"{path}.endPort", f"{end} is below port {number}")
    return PortRange(proto, number, end if end != number else 0)
