"""Policies -> per-endpoint policy map entries (bpf/lib/policy.h).

An endpoint's entries are keyed by direction, remote identity, protocol
and port, with port ranges as prefixes of the port (an LPM trie, as in
Cilium). Identity 0 is "any identity" and protocol 0 "any protocol, any
port". The datapath looks up the peer's security identity, any-identity,
and the peer address's CIDR identity (below); a deny from any of them
wins, else an allow from any of them allows, else the packet is dropped
when the endpoint is isolated in that direction.

Address rules (ipBlock, toCIDR, CIDRSets) do not multiply per identity:
every prefix named by any policy, excepts included, gets one *CIDR
identity* in the `policy_cidr` trie, and a packet's address takes the
identity of its longest matching prefix. A rule for "C except X" selects
the CIDR identities of the prefixes inside C and not inside any X, which
matches exactly the addresses in C outside every X, pod addresses too.

Deny precedence inside one identity is settled here: an allow entry that
a deny entry of the same identity covers (any protocol, or the same
protocol with a shorter or equal port prefix) becomes that deny, since the
trie would otherwise return the more specific allow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from porin.daemon.policy_model import PROTOCOLS, Direction, Kind, Peer, Policy, PortRange, Rule
from porin.daemon.selectors import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, NAMESPACE_NAME_LABEL

IDENTITY_ANY = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_REMOTE_NODE = 6
CIDR_IDENTITY_BASE = 1 << 24  # node-local identities of CIDR prefixes (Cilium's local scope)
RESERVED_LABELS = {
    IDENTITY_HOST: {"reserved:host": ""},
    IDENTITY_WORLD: {"reserved:world": ""},
    IDENTITY_REMOTE_NODE: {"reserved:remote-node": ""},
}

RULE_NONE = 0  # default deny: no entry matched
RULE_HOST = 1  # the node may always reach its pods (kubelet probes), as in Cilium

# (direction, identity, protocol, port, port prefix bits)
EntryKey = tuple[str, int, int, int, int]


@dataclass(frozen=True)
class EntryValue:
    rule_id: int
    deny: bool


@dataclass(frozen=True)
class IdentityInfo:
    id: int
    labels: Mapping[str, str]  # normalised (daemon/selectors.py)

    @property
    def namespace(self) -> str | None:
        return self.labels.get(NAMESPACE_LABEL)


@dataclass(frozen=True)
class NamedPort:
    name: str
    port: int
    protocol: str  # TCP, UDP, SCTP


@dataclass
class LocalEndpoint:
    id: int
    identity: int
    labels: Mapping[str, str]  # normalised, the namespace label included
    ports: tuple[NamedPort, ...] = ()

    @property
    def namespace(self) -> str:
        return self.labels.get(NAMESPACE_LABEL, "default")


@dataclass
class EndpointPolicy:
    """What one endpoint's map entries and enforcement flags should be."""

    ingress: bool = False  # isolated for ingress
    egress: bool = False
    entries: dict[EntryKey, EntryValue] = field(default_factory=dict)
    selected_by: dict[str, list[str]] = field(default_factory=dict)  # direction -> policy keys
    contributors: set[str] = field(default_factory=set)  # every policy that selects it


@dataclass
class World:
    """Everything selectors are evaluated against."""

    identities: dict[int, IdentityInfo]
    namespaces: dict[str, dict[str, str]]  # name -> labels
    peer_ports: dict[int, tuple[NamedPort, ...]] = field(default_factory=dict)  # identity -> ports
    cidr_ids: dict[str, int] = field(default_factory=dict)  # prefix -> CIDR identity

    def namespace_labels(self, name: str) -> dict[str, str]:
        return self.namespaces.get(name) or {NAMESPACE_NAME_LABEL: name}

    def cilium_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """Labels plus the namespace's own, as Cilium's selectors see them."""
        ns = labels.get(NAMESPACE_LABEL)
        out = dict(labels)
        if ns is not None:
            for k, v in self.namespace_labels(ns).items():
                out[NAMESPACE_LABELS_PREFIX + k] = v
        return out


def range_prefixes(lo: int, hi: int, bits: int = 16) -> list[tuple[int, int]]:
    """[lo, hi] as the fewest (value, prefix length) pairs over `bits` bits."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, bits - size.bit_length() + 1))
        lo += size
    return out


def assign_cidr_ids(policies: Iterable[Policy], old: Mapping[str, int]) -> dict[str, int]:
    """A CIDR identity for every IPv4 prefix the policies name; kept ones keep theirs."""
    want: set[str] = set()
    for p in policies:
        for r in p.rules:
            for peer in r.peers or ():
                for c in (peer.cidr, *peer.excepts) if peer.cidr else ():
                    if ipaddress.ip_network(c).version == 4:
                        want.add(c)
    out = {c: i for c, i in old.items() if c in want}
    free = (
        i
        for i in range(CIDR_IDENTITY_BASE, CIDR_IDENTITY_BASE + (1 << 24))
        if i not in set(out.values())
    )
    for c in sorted(want - set(out)):
        out[c] = next(free)
    return out


class Compiler:
    """Selectors resolved once per compile run (peers repeat across rules)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._peer_cache: dict[Peer, frozenset[int]] = {}
        self._pod_ids = frozenset(i for i, x in world.identities.items() if x.namespace is not None)
        # identities by label pair: a selector is checked only against those with its first pair
        self._by_pair: dict[tuple[str, str], set[int]] = {}
        for i, x in world.identities.items():
            for kv in x.labels.items():
                self._by_pair.setdefault(kv, set()).add(i)
        self._cidr_nets = {c: ipaddress.ip_network(c) for c in world.cidr_ids}

    # ----- who is selected -----

    def selects(self, policy: Policy, ep: LocalEndpoint) -> bool:
        if policy.kind == Kind.NETWORK_POLICY:
            return ep.namespace == policy.namespace and policy.subject.matches(ep.labels)
        if policy.kind == Kind.CILIUM_NETWORK_POLICY and ep.namespace != policy.namespace:
            return False
        return policy.subject.matches(self.world.cilium_labels(ep.labels))

    def peer_identities(self, peer: Peer) -> frozenset[int]:
        hit = self._peer_cache.get(peer)
        if hit is None:
            hit = self._peer_cache[peer] = frozenset(self._resolve(peer))
        return hit

    def _resolve(self, peer: Peer) -> Iterable[int]:
        w = self.world
        if peer.entity:
            return {
                "world": {IDENTITY_WORLD},
                "host": {IDENTITY_HOST},
                "remote-node": {IDENTITY_REMOTE_NODE},
                "cluster": {IDENTITY_HOST, IDENTITY_REMOTE_NODE} | self._pod_ids,
                "all": {IDENTITY_ANY},
            }[peer.entity]
        if peer.cidr:
            outer = ipaddress.ip_network(peer.cidr)
            if outer.version != 4:
                return ()
            holes = [ipaddress.ip_network(x) for x in peer.excepts]
            return [
                i
                for c, i in w.cidr_ids.items()
                if (n := self._cidr_nets[c]).subnet_of(outer)
                and not any(n.subnet_of(h) for h in holes)
            ]
        assert peer.pods is not None
        out = []
        pairs = [
            kv for kv in peer.pods.match_labels if not kv[0].startswith(NAMESPACE_LABELS_PREFIX)
        ]
        if pairs:  # only identities that carry the selector's labels can match
            candidates: Iterable[int] = sorted(
                min((self._by_pair.get(kv, set()) for kv in pairs), key=len)
            )
        else:
            candidates = w.identities
        if peer.cilium:
            for i in candidates:
                info = w.identities[i]
                if peer.namespace is not None and info.namespace != peer.namespace:
                    continue
                if info.namespace is None and peer.pods.is_empty:
                    continue  # `{}` means every pod, not the reserved identities
                if peer.pods.matches(w.cilium_labels(info.labels)):
                    out.append(i)
            return out
        for i in candidates:
            if i not in self._pod_ids:
                continue
            info = w.identities[i]
            ns = info.namespace
            assert ns is not None
            if peer.namespace is not None and ns != peer.namespace:
                continue
            if peer.namespace_selector is not None and not peer.namespace_selector.matches(
                w.namespace_labels(ns)
            ):
                continue
            if peer.pods.matches(info.labels):
                out.append(i)
        return out

    # ----- rules -> entries -----

    def rule_entries(self, rule: Rule, ep: LocalEndpoint) -> list[tuple[EntryKey, EntryValue]]:
        d = rule.direction.value
        value = EntryValue(rule.id, rule.deny)
        if rule.peers is None:
            idents: set[int] = {IDENTITY_ANY}
        else:
            idents = set()
            for peer in rule.peers:
                idents |= self.peer_identities(peer)
        out = []
        named_egress = rule.direction == Direction.EGRESS and any(p.name for p in rule.ports)
        if named_egress and IDENTITY_ANY in idents:
            # a named port is each destination's own: every identity that declares ports
            idents = (idents - {IDENTITY_ANY}) | set(self.world.peer_ports)
            numbered = tuple(p for p in rule.ports if not p.name)
            if numbered:
                out += self.rule_entries(
                    Rule(rule.direction, rule.deny, None, numbered, rule.section, rule.id), ep
                )
            rule = Rule(
                rule.direction,
                rule.deny,
                rule.peers,
                tuple(p for p in rule.ports if p.name),
                rule.section,
                rule.id,
            )
        for ident in sorted(idents):
            for proto, port, plen in self._ports(rule, ep, ident):
                out.append(((d, ident, proto, port, plen), value))
        return out

    def _ports(self, rule: Rule, ep: LocalEndpoint, ident: int) -> list[tuple[int, int, int]]:
        if not rule.ports:
            return [(0, 0, 0)]
        out = []
        for pr in rule.ports:
            proto = PROTOCOLS[pr.protocol]
            for lo, hi in self._numbers(pr, rule.direction, ep, ident):
                if lo == 0:
                    out.append((proto, 0, 0))
                else:
                    out.extend((proto, v, plen) for v, plen in range_prefixes(lo, hi))
        return out

    def _numbers(
        self, pr: PortRange, direction: Direction, ep: LocalEndpoint, ident: int
    ) -> list[tuple[int, int]]:
        if not pr.name:
            return [(pr.port, pr.end_port or pr.port)]
        # a named port is the destination's: the endpoint's own for ingress,
        # the peer's for egress (nothing for an address or entity peer)
        ports = ep.ports if direction == Direction.INGRESS else self.world.peer_ports.get(ident, ())
        return sorted(
            {(p.port, p.port) for p in ports if p.name == pr.name and p.protocol == pr.protocol}
        )

    def endpoint(self, ep: LocalEndpoint, policies: Iterable[Policy]) -> EndpointPolicy:
        out = EndpointPolicy()
        for p in policies:
            if not self.selects(p, ep):
                continue
            out.contributors.add(p.key)
            for d in p.isolates:
                out.selected_by.setdefault(d.value, []).append(p.key)
            for r in p.rules:
                if r.direction in p.isolates:
                    merge(out.entries, self.rule_entries(r, ep))
        out.ingress = Direction.INGRESS.value in out.selected_by
        out.egress = Direction.EGRESS.value in out.selected_by
        finish(out)
        return out


def merge(entries: dict[EntryKey, EntryValue], new: Iterable[tuple[EntryKey, EntryValue]]) -> None:
    for k, v in new:
        old = entries.get(k)
        if old is None or (v.deny and not old.deny):
            entries[k] = v


def finish(ep: EndpointPolicy) -> None:
    """The node's own access, then deny precedence (module docstring)."""
    if ep.ingress:
        merge(ep.entries, [(("ingress", IDENTITY_HOST, 0, 0, 0), EntryValue(RULE_HOST, False))])
    e = ep.entries
    for k, v in list(e.items()):
        if v.deny:
            continue
        d, ident, proto, port, plen = k
        cover = e.get((d, ident, 0, 0, 0))
        if cover is None and proto:
            for bits in range(plen + 1):
                mask = (0xFFFF << (16 - bits)) & 0xFFFF
                c = e.get((d, ident, proto, port & mask, bits))
                if c is not None and c.deny:
                    cover = c
                    break
        if cover is not None and cover.deny:
            e[k] = cover
    if not ep.ingress:
        _drop_direction(e, "ingress")
    if not ep.egress:
        _drop_direction(e, "egress")


def _drop_direction(e: dict[EntryKey, EntryValue], d: str) -> None:
    for k in [k for k in e if k[0] == d]:
        del e[k]
