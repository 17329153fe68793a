"""What the policy engine keeps per endpoint and hands between its parts:
programmed state, plans, the subject index, and small conversions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from porin.daemon.policy_compile import (
    Compiler,
    EndpointPolicy,
    EntryKey,
    EntryValue,
    LocalEndpoint,
    NamedPort,
)
from porin.daemon.policy_model import Namespace, Policy
from porin.daemon.policy_yaml import PolicyError
from porin.daemon.selectors import (
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    identity_labels,
    normalize_labels,
)
from porin.errors import PorinError
from porin.maps.endpoints import ENDPOINT_F_POLICY_EGRESS, ENDPOINT_F_POLICY_INGRESS
from porin.maps.policy import PolicyMapKey
from porin.models import Endpoint

POLICIES = "/porin/policies/"
IDENTITIES = "/porin/identities/"
NAMESPACES = "/porin/namespaces/"


class PolicyNotFound(PorinError):
    http_status = 404


class PolicyTooLarge(PolicyError):
    http_status = 409


@dataclass
class Programmed:
    """What the datapath holds for one endpoint."""

    flags: int
    rev: int
    entries: dict[EntryKey, EntryValue]
    selected_by: dict[str, list[str]] = field(default_factory=dict)
    contributors: set[str] = field(default_factory=set)
    owner: str = ""  # the endpoint it was computed for (ids are reused)


@dataclass
class Plan:
    """A reconcile, computed and checked, not yet written."""

    policies: dict[str, Policy]
    namespaces: dict[str, Namespace]
    cidr_ids: dict[str, int]
    endpoints: dict[int, EndpointPolicy]
    partial: bool = False  # only the endpoints in it were compiled; the others stand
    owners: dict[int, str] = field(default_factory=dict)


def flags_of(p: EndpointPolicy) -> int:
    return (ENDPOINT_F_POLICY_INGRESS if p.ingress else 0) | (
        ENDPOINT_F_POLICY_EGRESS if p.egress else 0
    )


def policy_key_of(store_key: str) -> str:
    return store_key[len(POLICIES) :]


def store_key(obj: Policy | Namespace) -> str:
    if isinstance(obj, Namespace):
        return NAMESPACES + obj.name
    return POLICIES + obj.key


def touched(
    ep: Endpoint,
    prog: dict[int, Programmed],
    changed: set[str],
    new: SubjectIndex,
    comp: Compiler,
) -> bool:
    """Whether a change of the `changed` policies (now as `new`) reaches `ep`."""
    if ep.id not in prog or prog[ep.id].contributors & changed:
        return True
    le = local_endpoint(ep)
    return any(comp.selects(p, le) for p in new.candidates(le))


class SubjectIndex:
    """Policies by what their subject needs, so an endpoint is only matched
    against policies that can select it: namespaced kinds by namespace, then
    by one of their matchLabels pairs when they have any."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.by_pair: dict[tuple[str, str, str], list[Policy]] = {}
        self.by_ns: dict[str, list[Policy]] = {}
        self.rest: list[Policy] = []
        for p in sorted(policies, key=lambda p: p.key):
            pair = p.subject.match_labels[0] if p.subject.match_labels else None
            if p.namespace and pair and not pair[0].startswith(NAMESPACE_LABELS_PREFIX):
                self.by_pair.setdefault((p.namespace, *pair), []).append(p)
            elif p.namespace:
                self.by_ns.setdefault(p.namespace, []).append(p)
            else:
                self.rest.append(p)

    def candidates(self, ep: LocalEndpoint) -> list[Policy]:
        ns = ep.namespace
        out = list(self.by_ns.get(ns, ())) + self.rest
        for k, v in ep.labels.items():
            out += self.by_pair.get((ns, k, v), ())
        return sorted(out, key=lambda p: p.key)


def selectors_of(res: EndpointPolicy) -> set[str]:
    return {k for v in res.selected_by.values() for k in v}


def map_key(ep_id: int, k: EntryKey) -> PolicyMapKey:
    return PolicyMapKey(ep_id, k[0], k[1], k[2], k[3], k[4])


def owner_of(ep: Endpoint) -> str:
    return f"{ep.container_id}/{ep.ifname}/{ep.ip}"


def named_ports(ep: Endpoint) -> tuple[NamedPort, ...]:
    return tuple(
        NamedPort(p["name"], int(p["containerPort"]), p.get("protocol", "TCP"))
        for p in ep.ports
        if p.get("name")
    )


def local_endpoint(ep: Endpoint) -> LocalEndpoint:
    return LocalEndpoint(
        ep.id, ep.identity, normalize_labels(identity_labels(ep.labels)), named_ports(ep)
    )


def ep_name(ep: Endpoint) -> str:
    labels = normalize_labels(ep.labels)
    name = labels.get("io.kubernetes.pod.name")
    ns = labels.get(NAMESPACE_LABEL, "default")
    return f"{ns}/{name}" if name else ep.container_id[:12]


def display(obj: Policy | Namespace) -> str:
    return obj.display if isinstance(obj, Policy) else obj.name
