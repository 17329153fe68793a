"""The policy compiler: selectors, identities, port ranges, CIDR identities, deny precedence."""

from __future__ import annotations

import random

import yaml

from porin.daemon.policy_compile import (
    IDENTITY_HOST,
    IDENTITY_REMOTE_NODE,
    IDENTITY_WORLD,
    RULE_HOST,
    Compiler,
    EndpointPolicy,
    IdentityInfo,
    LocalEndpoint,
    NamedPort,
    World,
    assign_cidr_ids,
    range_prefixes,
)
from porin.daemon.policy_model import Policy
from porin.daemon.policy_yaml import parse_documents
from porin.daemon.selectors import Requirement, Selector, identity_labels, normalize_labels

NS = "io.kubernetes.pod.namespace"
# the upstream model: namespaces x, y, z; pods a, b, c in each
IDS = {
    100 + 10 * i + j: {"pod": p, NS: ns} for i, ns in enumerate("xyz") for j, p in enumerate("abc")
}


def world(policies: list[Policy], namespaces: dict[str, dict[str, str]] | None = None) -> World:
    idents = {i: IdentityInfo(i, labels) for i, labels in IDS.items()}
    idents[IDENTITY_HOST] = IdentityInfo(IDENTITY_HOST, {"reserved:host": ""})
    idents[IDENTITY_WORLD] = IdentityInfo(IDENTITY_WORLD, {"reserved:world": ""})
    idents[IDENTITY_REMOTE_NODE] = IdentityInfo(IDENTITY_REMOTE_NODE, {"reserved:remote-node": ""})
    ns = namespaces or {n: {"kubernetes.io/metadata.name": n, "ns": n} for n in "xyz"}
    return World(idents, ns, cidr_ids=assign_cidr_ids(policies, {}))


def compile_for(text: str, ident: int = 100, ports: tuple[NamedPort, ...] = ()) -> EndpointPolicy:
    pols = [
        p for p in parse_documents(list(yaml.safe_load_all(text)), "t") if isinstance(p, Policy)
    ]
    for i, p in enumerate(pols):
        for j, r in enumerate(p.rules):
            r.id = 1000 + 100 * i + j
    ep = LocalEndpoint(1, ident, IDS[ident], ports)
    return Compiler(world(pols)).endpoint(ep, pols)


def allowed(
    res: EndpointPolicy, direction: str, ident: int, proto: int, port: int, cidr_id: int = 0
) -> bool:
    """What bpf/lib/policy.h decides, from the compiled entries."""
    if not (res.ingress if direction == "ingress" else res.egress):
        return True
    hits = []
    for who in ([ident] if ident else []) + [0] + ([cidr_id] if cidr_id else []):
        best = None
        for (d, i, pr, pv, bits), v in res.entries.items():
            if d != direction or i != who:
                continue
            if pr == 0:
                spec = (0, 0)
            elif pr == proto and (port >> (16 - bits) if bits else 0) == (
                pv >> (16 - bits) if bits else 0
            ):
                spec = (1, bits)
            else:
                continue
            if best is None or spec > best[0]:
                best = (spec, v)
        if best is not None:
            hits.append(best[1])
    if any(h.deny for h in hits):
        return False
    return bool(hits)


NP = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"


def test_range_prefixes_cover_exactly() -> None:
    rng = random.Random(7)
    for _ in range(200):
        lo = rng.randrange(1, 65536)
        hi = rng.randrange(lo, 65536)
        covered = set()
        for v, bits in range_prefixes(lo, hi):
            size = 1 << (16 - bits)
            assert v % size == 0
            covered |= set(range(v, v + size))
        assert covered == set(range(lo, hi + 1))
    assert range_prefixes(80, 80) == [(80, 16)]
    assert range_prefixes(1024, 2047) == [(1024, 6)]


def test_selectors_match_expressions_and_normalised_keys() -> None:
    s = Selector(
        (("app", "web"),), (Requirement("tier", "NotIn", ("db",)), Requirement("env", "Exists"))
    )
    assert s.matches({"app": "web", "env": "x"})
    assert not s.matches({"app": "web", "env": "x", "tier": "db"})
    assert not s.matches({"app": "web"})
    assert normalize_labels({"k8s:app": "a", "any:b": "c", "reserved:host": ""}) == {
        "app": "a",
        "b": "c",
        "reserved:host": "",
    }
    assert identity_labels({"k8s:io.kubernetes.pod.name": "p", "app": "a"}) == {
        "app": "a",
        "k8s:io.kubernetes.pod.namespace": "default",
    }


def test_default_deny_ingress_and_host_stays_allowed() -> None:
    res = compile_for(NP + "metadata: {name: d, namespace: x}\nspec: {podSelector: {}}")
    assert res.ingress and not res.egress
    assert not allowed(res, "ingress", 101, 6, 80)
    assert allowed(res, "ingress", IDENTITY_HOST, 6, 80)
    assert allowed(res, "egress", 101, 6, 80)
    assert [v.rule_id for v in res.entries.values()] == [RULE_HOST]


def test_pod_namespace_and_combined_selectors() -> None:
    res = compile_for(
        NP
        + """metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: c}}
"""
    )
    ok = {i for i in IDS if allowed(res, "ingress", i, 6, 80)}
    assert ok == {101, 112}  # x/b, y/c


def test_namespace_selector_alone_selects_every_pod_of_those_namespaces() -> None:
    res = compile_for(
        NP + "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n"
        "  ingress: [{from: [{namespaceSelector:\n"
        "    {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]"
    )
    assert {i for i in IDS if allowed(res, "ingress", i, 6, 80)} == {110, 111, 112, 120, 121, 122}
    assert not allowed(res, "ingress", IDENTITY_WORLD, 6, 80)


def test_ports_ranges_protocols_and_named_ports() -> None:
    res = compile_for(
        NP
        + """metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {port: 80}
    - {protocol: UDP, port: 1000, endPort: 1010}
    - {port: serve-81}
    - {protocol: SCTP, port: 80}
""",
        ports=(NamedPort("serve-81", 81, "TCP"), NamedPort("serve-81", 91, "UDP")),
    )
    assert allowed(res, "ingress", 101, 6, 80)
    assert not allowed(res, "ingress", 101, 17, 80)
    assert allowed(res, "ingress", 101, 6, 81)  # the named port, its protocol only
    assert not allowed(res, "ingress", 101, 17, 91)
    assert [p for p in range(990, 1020) if allowed(res, "ingress", 101, 17, p)] == list(
        range(1000, 1011)
    )
    assert not allowed(res, "ingress", 101, 6, 1005)
    assert not allowed(res, "ingress", 101, 1, 8)  # ICMP: not in a port rule
    assert not allowed(res, "ingress", 101, 6, 132)


def test_a_rule_without_ports_allows_every_protocol() -> None:
    res = compile_for(
        NP + "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}"
    )
    assert allowed(res, "ingress", IDENTITY_WORLD, 1, 8)
    assert allowed(res, "ingress", 121, 132, 9)


def test_ipblock_except_via_cidr_identities() -> None:
    text = (
        NP + "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n"
        "  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.1.2.0/24]}}]\n"
        "  - from: [{ipBlock: {cidr: 10.1.2.0/25}}]\n"
    )
    pols = [
        p for p in parse_documents(list(yaml.safe_load_all(text)), "t") if isinstance(p, Policy)
    ]
    cidr_ids = assign_cidr_ids(pols, {})
    assert set(cidr_ids) == {"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/25"}
    res = compile_for(text)

    def by_address(ip: str) -> bool:
        import ipaddress

        best = max(
            (c for c in cidr_ids if ipaddress.ip_address(ip) in ipaddress.ip_network(c)),
            key=lambda c: ipaddress.ip_network(c).prefixlen,
            default=None,
        )
        return allowed(res, "ingress", 999, 6, 80, cidr_ids[best] if best else 0)

    assert by_address("10.2.3.4")
    assert not by_address("10.1.3.4")  # except
    assert not by_address("10.1.2.200")  # except of the first, not in the second
    assert by_address("10.1.2.5")  # the second rule
    assert not by_address("11.0.0.1")


def test_deny_wins_over_a_more_specific_allow() -> None:
    res = compile_for(
        """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: x}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEntities: [all]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: "0", protocol: TCP}]}]
  - fromEntities: [world]
"""
    )
    assert not allowed(res, "ingress", 101, 6, 80)  # a deny of every TCP port covers it
    assert not allowed(
        res, "ingress", 101, 6, 443
    )  # a deny for its identity beats any-identity allow
    assert allowed(res, "ingress", 102, 6, 443)
    assert not allowed(res, "ingress", IDENTITY_WORLD, 6, 443)
    denies = {v.rule_id for v in res.entries.values() if v.deny}
    assert denies == {1002, 1003}  # attributed to the deny rules


def test_cilium_namespace_defaults_and_namespace_labels() -> None:
    res = compile_for(
        """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: x}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
  - fromEndpoints: [{matchLabels: {"k8s:io.cilium.k8s.namespace.labels.ns": z, pod: c}}]
"""
    )
    assert {i for i in IDS if allowed(res, "ingress", i, 6, 1)} == {100, 101, 102}
    res = compile_for(
        """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: x}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {"io.kubernetes.pod.namespace": z}}]
"""
    )
    assert {i for i in IDS if allowed(res, "ingress", i, 6, 1)} == {120, 121, 122}


def test_entities() -> None:
    res = compile_for(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\n"
        "spec: {endpointSelector: {}, egress: [{toEntities: [cluster]}]}"
    )
    assert allowed(res, "egress", IDENTITY_REMOTE_NODE, 6, 1)
    assert allowed(res, "egress", 122, 6, 1)
    assert not allowed(res, "egress", IDENTITY_WORLD, 6, 1)


def test_policies_union_and_unselected_endpoints_are_open() -> None:
    def from_pod(name: str, pod: str) -> str:
        return (
            NP + f"metadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{}}\n"
            f"  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]}}]\n---\n"
        )

    two = (
        from_pod("p1", "b")
        + from_pod("p2", "c")
        + NP
        + "metadata: {name: other, namespace: y}\nspec: {podSelector: {}}"
    )
    res = compile_for(two)
    assert {i for i in IDS if allowed(res, "ingress", i, 6, 1)} == {101, 102}
    assert res.selected_by == {"ingress": ["NetworkPolicy/x/p1", "NetworkPolicy/x/p2"]}
    res = compile_for(two, ident=110)  # y/a: only `other` selects it
    assert res.ingress and not any(allowed(res, "ingress", i, 6, 1) for i in IDS)
