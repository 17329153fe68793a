"""The policy engine's compile-and-program half (PolicyManager mixes it in):
compile policies for the local endpoints into a plan, and write a plan to
the maps in an order that never opens a gap."""

from __future__ import annotations

import logging

from porin.daemon.kvstore import KvStoreError
from porin.daemon.policy_compile import (
    RESERVED_LABELS,
    Compiler,
    EndpointPolicy,
    IdentityInfo,
    World,
    assign_cidr_ids,
)
from porin.daemon.policy_model import Namespace, Policy
from porin.daemon.policy_state import (
    Plan,
    PolicyTooLarge,
    Programmed,
    SubjectIndex,
    ep_name,
    flags_of,
    local_endpoint,
    map_key,
    named_ports,
    owner_of,
    selectors_of,
    touched,
)
from porin.daemon.selectors import normalize_labels
from porin.maps.policy import PolicyMapKey
from porin.models import Endpoint, EndpointState

log = logging.getLogger("porin.policy")


class PolicyProgrammer:
    """Needs the PolicyManager's state: policies, programmed, maps, limits, locks."""

    def _world(self, namespaces: dict[str, Namespace], cidr_ids: dict[str, int]) -> World:
        idents: dict[int, IdentityInfo] = {
            i: IdentityInfo(i, labels) for i, labels in RESERVED_LABELS.items()
        }
        try:
            known = self.identities()
            if known != self._identities:
                self._identities = known
                self._save_cache()
        except KvStoreError:  # the kvstore is away: the identities last seen
            known = self._identities
        for x in known:
            if x["id"] in RESERVED_LABELS:
                continue
            idents[x["id"]] = IdentityInfo(x["id"], normalize_labels(x.get("labels") or {}))
        ports = {i: tuple(v) for i, v in self.remote_ports().items()}
        for ep in self.local_endpoints():
            mine = named_ports(ep)
            if mine:
                ports[ep.identity] = tuple(sorted(set(ports.get(ep.identity, ()) + mine), key=str))
        return World(
            identities=idents,
            namespaces={n: ns.labels for n, ns in namespaces.items()},
            peer_ports=ports,
            cidr_ids=cidr_ids,
        )

    def plan(
        self,
        policies: dict[str, Policy],
        namespaces: dict[str, Namespace],
        endpoints: list[Endpoint] | None = None,
        changed: set[str] | None = None,
    ) -> Plan:
        """Compile `policies` for the local endpoints; PolicyTooLarge if they do not fit.

        With `changed` (policy keys) and nothing else moved, only the endpoints
        those policies select, before or after, are compiled: a policy's rules
        only ever give entries to the endpoints it selects."""
        cidr_ids = assign_cidr_ids(policies.values(), self.cidr_ids)
        if len(cidr_ids) > self.cidr_limit:
            raise PolicyTooLarge(
                f"the policies name {len(cidr_ids)} distinct CIDR prefixes; "
                f"policyCIDRMapSize allows {self.cidr_limit}"
            )
        comp = Compiler(self._world(namespaces, cidr_ids))
        index = SubjectIndex(policies.values())
        out: dict[int, EndpointPolicy] = {}
        owners: dict[int, str] = {}
        total = 0
        todo = endpoints if endpoints is not None else self.local_endpoints()
        partial = False
        if changed is not None and endpoints is None and cidr_ids == self.cidr_ids:
            with self._state:
                prog = dict(self.programmed)
            new = SubjectIndex(policies[k] for k in changed if k in policies)
            todo = [ep for ep in todo if touched(ep, prog, changed, new, comp)]
            keep = {ep.id for ep in todo}
            total = sum(len(p.entries) for i, p in prog.items() if i not in keep)
            partial = True
        for ep in todo:
            if ep.state != EndpointState.READY and endpoints is None:
                continue
            le = local_endpoint(ep)
            cand = [p for p in index.candidates(le) if comp.selects(p, le)]
            res = comp.endpoint(le, cand)
            if len(res.entries) > self.per_endpoint_limit:
                raise PolicyTooLarge(
                    f"endpoint {ep.id} ({ep_name(ep)}) would need {len(res.entries)} policy "
                    f"entries; policyEntriesPerEndpoint allows {self.per_endpoint_limit} "
                    f"(selected by {', '.join(sorted(selectors_of(res)))})"
                )
            total += len(res.entries)
            out[ep.id] = res
            owners[ep.id] = owner_of(ep)
        if total > self.total_limit:
            raise PolicyTooLarge(
                f"the local endpoints would need {total} policy entries; "
                f"policyMapSize allows {self.total_limit}"
            )
        return Plan(policies, namespaces, cidr_ids, out, partial, owners)

    def reconcile(self, plan: Plan | None = None) -> int:
        """Program a plan (default: the current state); returns endpoints changed."""
        with self._reconcile:
            if plan is None:
                with self._state:
                    policies, namespaces = dict(self.policies), dict(self.namespaces)
                try:
                    plan = self.plan(policies, namespaces)
                except PolicyTooLarge as e:
                    # stored by another node, or grown by new identities: keep what runs
                    log.error("policy: not programmed, the datapath keeps the last state: %s", e)
                    return 0
            return self._program(plan, self._identities_moved())

    def _identities_moved(self) -> bool:
        """Whether an address now has another identity than at the last reconcile (a
        pod relabelled, an address reused): connections cached under the old one are
        then decided again, even where no entry changed."""
        now = self.ip_identities()
        with self._state:
            before, self._ip_identity = self._ip_identity, now
        return any(before[ip] != ident for ip, ident in now.items() if ip in before)

    def _program(self, plan: Plan, force: bool = False) -> int:
        with self._state:
            self.revision += 1
            rev = self.revision
            adopted = self._adopted
        # 1. CIDR prefixes new to the trie, then every new or changed entry
        for cidr, ident in plan.cidr_ids.items():
            if self.cidr_ids.get(cidr) != ident:
                self.cidr_map.write(cidr, ident)
        changed: list[int] = []
        stale: list[PolicyMapKey] = []
        for ep_id, want in plan.endpoints.items():
            with self._state:
                have = self.programmed.get(ep_id)
            have_entries = have.entries if have else adopted.pop(ep_id, {})
            flags = flags_of(want)
            for k, v in want.entries.items():
                if have_entries.get(k) != v:
                    self.map.write(map_key(ep_id, k), v.rule_id, v.deny)
            gone = [k for k in have_entries if k not in want.entries]
            stale += [map_key(ep_id, k) for k in gone]
            moved = (
                have is None
                or have.flags != flags
                or have_entries != want.entries
                or (force and flags != 0)
            )
            with self._state:
                self.programmed[ep_id] = Programmed(
                    flags,
                    rev if moved or have is None else have.rev,
                    want.entries,
                    want.selected_by,
                    want.contributors,
                    plan.owners.get(ep_id, ""),
                )
            if moved:
                changed.append(ep_id)
        # 2. the changed endpoints' flags and revision
        if changed:
            self.refresh_endpoints(changed)
        # 3. what no endpoint needs any more
        with self._state:
            if not plan.partial:
                for ep_id in [i for i in self.programmed if i not in plan.endpoints]:
                    old = self.programmed.pop(ep_id)
                    stale += [map_key(ep_id, k) for k in old.entries]
                for ep_id, old_entries in adopted.items():
                    stale += [map_key(ep_id, k) for k in old_entries]
                self._adopted = {}
        for k in stale:
            self.map.remove(k)
        for cidr in [c for c in self.cidr_ids if c not in plan.cidr_ids]:
            self.cidr_map.remove(cidr)
        with self._state:
            self.cidr_ids = dict(plan.cidr_ids)
            self.reconciles += 1
        return len(changed)

    def state_for(self, ep: Endpoint) -> tuple[int, int] | None:
        """The policy flags and revision of `ep`'s datapath entry; a new
        endpoint's entries are programmed here, before it is reachable."""
        with self._state:
            have = self.programmed.get(ep.id)
            if have is not None and have.owner in ("", owner_of(ep)):
                return have.flags, have.rev
            if self.store is None:
                return None  # not started: keep what the datapath has
            policies, namespaces = dict(self.policies), dict(self.namespaces)
        try:
            plan = self.plan(policies, namespaces, [ep])
        except PolicyTooLarge as e:
            raise PolicyTooLarge(f"the endpoint cannot be admitted: {e}") from None
        want = plan.endpoints[ep.id]
        for k, v in want.entries.items():
            self.map.write(map_key(ep.id, k), v.rule_id, v.deny)
        with self._state:
            self.revision += 1
            p = Programmed(
                flags_of(want),
                self.revision,
                want.entries,
                want.selected_by,
                want.contributors,
                owner_of(ep),
            )
            old = self.programmed.get(ep.id)
            self.programmed[ep.id] = p
        if old is not None:  # an earlier endpoint of that id: what it had and this one has not
            for k in old.entries:
                if k not in want.entries:
                    self.map.remove(map_key(ep.id, k))
        self.changed()  # its identity may be new to the other endpoints' rules
        return p.flags, p.rev

    def forget(self, ep: Endpoint) -> None:
        """An endpoint went: its entries go (unless its id already serves another)."""
        with self._state:
            old = self.programmed.get(ep.id)
            if old is not None and old.owner not in ("", owner_of(ep)):
                return
            self.programmed.pop(ep.id, None)
        if old:
            for k in old.entries:
                self.map.remove(map_key(ep.id, k))
        self.changed()
