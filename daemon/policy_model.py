"""Network policy as the agent holds it, whichever YAML it came from.

Kubernetes NetworkPolicy, CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy all parse (daemon/policy_yaml.py) into one
`Policy`: the endpoints it selects (`subject`), the directions it isolates,
and a list of `Rule`s. A rule allows or denies traffic between the
selected endpoints and its `peers` on its `ports`; `peers` None means every
peer, `ports` empty every protocol and port. The compiler
(daemon/policy_compile.py) turns them into map entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from porin.daemon.selectors import EVERYTHING, Selector


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Kind(StrEnum):
    NETWORK_POLICY = "NetworkPolicy"
    CILIUM_NETWORK_POLICY = "CiliumNetworkPolicy"
    CILIUM_CLUSTERWIDE = "CiliumClusterwideNetworkPolicy"
    NAMESPACE = "Namespace"


# protocol numbers as the datapath sees them; "ANY" is none of them
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}

# Cilium's entities and what they are made of (daemon/policy_compile.py)
ENTITIES = ("world", "host", "remote-node", "cluster", "all")


@dataclass(frozen=True)
class PortRange:
    """One protocol and a port or range; port 0 means every port.

    For ICMP, `port` is the ICMP type (Cilium's `icmps`). A named port
    (`name`) is resolved per destination endpoint."""

    protocol: str  # a key of PROTOCOLS, or "ANY": every protocol, every port
    port: int = 0
    end_port: int = 0  # 0: `port` alone
    name: str = ""

    def __str__(self) -> str:
        if self.protocol == "ANY":
            return "any"
        what = self.name or (
            f"{self.port}-{self.end_port}" if self.end_port else str(self.port or "*")
        )
        return f"{what}/{self.protocol}"


@dataclass(frozen=True)
class Peer:
    """Who is on the other side: pods by labels, addresses, or an entity."""

    pods: Selector | None = None  # pods whose labels match
    namespace: str | None = None  # ... in this namespace
    namespace_selector: Selector | None = None  # ... in namespaces whose labels match
    cilium: bool = False  # a Cilium endpoint selector (namespace labels, reserved labels)
    cidr: str = ""  # addresses in this prefix ...
    excepts: tuple[str, ...] = ()  # ... but not in these
    entity: str = ""  # one of ENTITIES

    def __str__(self) -> str:
        if self.cidr:
            return self.cidr + "".join(f" except {e}" for e in self.excepts)
        if self.entity:
            return f"entity {self.entity}"
        where = ""
        if self.namespace is not None:
            where = f" in {self.namespace}"
        elif self.namespace_selector is not None:
            where = f" in namespaces {self.namespace_selector}"
        return f"pods {self.pods or EVERYTHING}{where}"


@dataclass
class Rule:
    direction: Direction
    deny: bool
    peers: tuple[Peer, ...] | None  # None: every peer
    ports: tuple[PortRange, ...]  # (): every protocol and port
    section: str  # where in the policy: "ingress[0]", "egressDeny[1]"
    id: int = 0  # assigned by the policy manager, carried by map entries

    def describe(self) -> str:
        peers = "everyone" if self.peers is None else "; ".join(str(p) for p in self.peers)
        ports = ", ".join(str(p) for p in self.ports) or "any port"
        return f"{'deny' if self.deny else 'allow'} {self.direction} {peers} on {ports}"


@dataclass
class Policy:
    kind: Kind
    namespace: str  # "" for a clusterwide policy
    name: str
    subject: Selector  # the endpoints it applies to
    isolates: frozenset[Direction]
    rules: list[Rule]
    document: dict[str, Any] = field(default_factory=dict)  # as applied

    @property
    def key(self) -> str:
        return policy_key(self.kind, self.namespace, self.name)

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def restrict_namespace(self) -> str | None:
        """The namespace its subject is limited to (None: clusterwide)."""
        return self.namespace or None


def policy_key(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}//{name}"


@dataclass
class Namespace:
    name: str
    labels: dict[str, str]
    document: dict[str, Any] = field(default_factory=dict)
