"""The policy parser and validator: Kubernetes and Cilium semantics, bad input."""

from __future__ import annotations

import pytest
import yaml

from porin.daemon.policy_model import Direction, Kind, Namespace, Policy
from porin.daemon.policy_yaml import NotSupported, PolicyError, parse_documents

NP = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
CNP = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"


def parse(text: str) -> list[Policy | Namespace]:
    return parse_documents(list(yaml.safe_load_all(text)), "t.yaml")


def one(text: str) -> Policy:
    (p,) = parse(text)
    assert isinstance(p, Policy)
    return p


def test_policy_types_default_to_ingress_and_egress_when_egress_rules_exist() -> None:
    p = one(NP + "metadata: {name: a, namespace: x}\nspec: {podSelector: {}}")
    assert p.isolates == {Direction.INGRESS}
    assert p.rules == []  # isolates ingress, allows nothing
    p = one(NP + "metadata: {name: a}\nspec: {podSelector: {}, egress: [{}]}")
    assert p.isolates == {Direction.INGRESS, Direction.EGRESS}
    assert p.namespace == "default"
    # an empty egress list adds no Egress (the API server's defaulting)
    p = one(NP + "metadata: {name: a}\nspec: {podSelector: {}, egress: []}")
    assert p.isolates == {Direction.INGRESS}


def test_empty_and_absent_from_and_ports_mean_everything() -> None:
    p = one(
        NP + "metadata: {name: a}\nspec: {podSelector: {}, ingress: [{}, {from: [], ports: []}]}"
    )
    assert [(r.peers, r.ports) for r in p.rules] == [(None, ()), (None, ())]


def test_rules_of_a_direction_not_in_policy_types_are_ignored() -> None:
    p = one(
        NP + "metadata: {name: a}\nspec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}"
    )
    assert p.isolates == {Direction.EGRESS}
    assert p.rules == []


def test_peers_pod_namespace_both_and_ipblock() -> None:
    p = one(
        NP
        + """metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {matchLabels: {ns: y}}
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [c]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
"""
    )
    a, b, c, d = p.rules[0].peers or ()
    assert a.namespace == "x" and a.namespace_selector is None
    assert b.namespace is None and b.pods is not None and b.pods.is_empty
    assert c.namespace_selector is not None and c.pods is not None and not c.pods.is_empty
    assert (d.cidr, d.excepts) == ("10.0.0.0/8", ("10.1.0.0/16",))


def test_ports_protocol_default_ranges_and_named() -> None:
    p = one(
        NP
        + """metadata: {name: a}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80}, {protocol: UDP, port: 1000, endPort: 2000}, {port: http}, {protocol: SCTP}]
"""
    )
    got = [(x.protocol, x.port, x.end_port, x.name) for x in p.rules[0].ports]
    assert got == [
        ("TCP", 80, 0, ""),
        ("UDP", 1000, 2000, ""),
        ("TCP", 0, 0, "http"),
        ("SCTP", 0, 0, ""),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{podSelector: {}, ingres: []}", "spec.ingres: unknown field"),
        ("{ingress: []}", "spec.podSelector: is required"),
        ("{podSelector: {}, policyTypes: [Both]}", "spec.policyTypes[0]"),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}",
            "spec.podSelector.matchExpressions[0].operator: 'Equals' is not a valid operator",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
            "values: must not be empty with operator In",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}",
            "values: must be empty with operator Exists",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{}]}]}",
            "must set podSelector, namespaceSelector or ipBlock",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "is not a valid CIDR",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock:"
            " {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
            "must be a strict subset of 10.0.0.0/8",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8},"
            " podSelector: {}}]}]}",
            "ipBlock cannot be combined",
        ),
        ("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}", "must be a port number 1-65535"),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}",
            "endPort: 80 is below port 90",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}",
            "cannot be used with a named port",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
            "'ICMP' is not a supported protocol",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: HTTP_X}]}]}",
            "neither a port number nor a valid port name",
        ),
        ("{podSelector: {}, ingress: {from: []}}", "spec.ingress: must be a list, got object"),
        ("{podSelector: {}, ingress: [{from: {}}]}", "ingress[0].from: must be a list, got object"),
        (
            "{podSelector: {}, ingress: [{ports: [{port: '80'}]}]}",
            "'80' is a port name without a letter: write 80 unquoted",
        ),
    ],
)
def test_bad_network_policies_name_the_field(spec: str, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse(NP + f"metadata: {{name: bad, namespace: x}}\nspec: {spec}")
    assert message in str(e.value)
    assert "t.yaml: document 1 (NetworkPolicy x/bad)" in str(e.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}", "unknown kind 'Pod'"),
        (
            "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}",
            "needs apiVersion",
        ),
        (NP + "metadata: {name: Bad_Name}\nspec: {podSelector: {}}", "is not a valid name"),
        (NP + "metadata: {namespace: x}\nspec: {podSelector: {}}", "metadata.name: is required"),
        (NP + "metadata: {name: a, labels: {a: [b]}}\nspec: {podSelector: {}}", "must be a string"),
        (NP + "metadata: {name: a, namespace: []}\nspec: {podSelector: {}}", "must be a string"),
        ("- a\n- b", "must be an object, got list"),
    ],
)
def test_bad_documents(doc: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse(doc)


def test_a_bad_document_fails_the_whole_file_and_duplicates_are_refused() -> None:
    good = NP + "metadata: {name: a}\nspec: {podSelector: {}}"
    with pytest.raises(PolicyError, match="document 2"):
        parse(good + "\n---\n" + NP + "metadata: {name: b}\nspec: {podSelector: 1}")
    with pytest.raises(PolicyError, match="also defined by"):
        parse(good + "\n---\n" + good)


def test_namespace_gets_its_name_label() -> None:
    (ns,) = parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}")
    assert isinstance(ns, Namespace)
    assert ns.labels == {"team": "a", "kubernetes.io/metadata.name": "x"}


def test_cilium_policy_sections_entities_cidrsets_icmps_and_deny() -> None:
    p = one(
        CNP
        + """metadata: {name: c, namespace: x}
spec:
  endpointSelector: {matchLabels: {"k8s:app": web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: db}}, {matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]
    toPorts: [{ports: [{port: "80"}, {port: "8000", endPort: 8080, protocol: TCP}]}]
  - fromEntities: [world, cluster]
  - icmps: [{fields: [{type: EchoRequest}, {type: 8, family: IPv6}]}]
  ingressDeny:
  - fromCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}]
  egress:
  - toCIDR: [8.8.8.8/32]
"""
    )
    assert p.kind == Kind.CILIUM_NETWORK_POLICY
    assert p.subject.match_labels == (("app", "web"),)
    assert p.isolates == {Direction.INGRESS, Direction.EGRESS}
    eps, ents, icmp, deny, egress = p.rules
    a, b = eps.peers or ()
    assert a.namespace == "x" and a.cilium  # implicit namespace
    assert b.namespace is None  # says its namespace itself
    # ANY expands to TCP, UDP and SCTP; the range stays one
    assert [(x.protocol, x.port, x.end_port) for x in eps.ports] == [
        ("TCP", 80, 0),
        ("UDP", 80, 0),
        ("SCTP", 80, 0),
        ("TCP", 8000, 8080),
    ]
    assert [x.entity for x in ents.peers or ()] == ["world", "cluster"]
    assert icmp.peers is None and [(x.protocol, x.port) for x in icmp.ports] == [("ICMP", 8)]
    assert deny.deny and (deny.peers or ())[0].excepts == ("192.168.1.0/24",)
    assert egress.direction == Direction.EGRESS and (egress.peers or ())[0].cidr == "8.8.8.8/32"


def test_cilium_empty_rule_isolates_and_allows_nothing() -> None:
    p = one(CNP + "metadata: {name: c}\nspec: {endpointSelector: {}, ingress: [{}]}")
    assert p.isolates == {Direction.INGRESS} and p.rules == []


def test_cilium_enable_default_deny_false_does_not_isolate() -> None:
    p = one(
        CNP
        + "metadata: {name: c}\nspec: {endpointSelector: {}, enableDefaultDeny: {ingress: false},"
        " ingressDeny: [{fromEntities: [world]}]}"
    )
    assert p.isolates == set() and p.rules[0].deny


def test_clusterwide_policy_has_no_namespace() -> None:
    p = one(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\n"
        "spec: {endpointSelector: {}, egress: [{toEntities: [all]}]}"
    )
    assert p.namespace == "" and (p.rules[0].peers or ())[0].namespace is None


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("egress: [{toFQDNs: [{matchName: a.com}]}]", "toFQDNs"),
        ("ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]", "L7"),
        ("ingress: [{fromRequires: [{}]}]", "requirements"),
        ("egress: [{toServices: [{}]}]", "service selectors"),
    ],
)
def test_cilium_l7_and_other_unsupported_fields_are_refused(rule: str, message: str) -> None:
    with pytest.raises(NotSupported, match=message) as e:
        parse(CNP + f"metadata: {{name: c}}\nspec: {{endpointSelector: {{}}, {rule}}}")
    assert "not supported by Porin" in str(e.value)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("ingress: [{fromEntities: [kube-apiserver]}]", "not a supported entity"),
        (
            "ingress: [{toPorts: [{ports: [{port: '80', protocol: ICMP}]}]}]",
            "not a supported protocol",
        ),
        ("ingress: [{toPorts: [{ports: []}]}]", "must list at least one port"),
        ("ingress: [{icmps: [{fields: [{type: 300}]}]}]", "is not an ICMP type"),
        ("ingress: [{fromCIDR: [300.1.1.1/8]}]", "is not a valid CIDR"),
        ("ingress: [{fromEndpoint: [{}]}]", "unknown field"),
    ],
)
def test_cilium_bad_rules(rule: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse(CNP + f"metadata: {{name: c}}\nspec: {{endpointSelector: {{}}, {rule}}}")


def test_node_selector_policies_are_refused() -> None:
    with pytest.raises(NotSupported, match="host policies"):
        parse(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\n"
            "spec: {nodeSelector: {}, ingress: [{}]}"
        )


def test_kubectl_metadata_is_accepted_and_lists_are_flattened() -> None:
    docs = parse(
        "apiVersion: v1\nkind: List\nitems:\n- "
        + "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a, uid: x,"
        " resourceVersion: '1', creationTimestamp: null}, spec: {podSelector: {}}, status: {}}"
    )
    assert len(docs) == 1
