"""The policy engine: stored policies -> every local endpoint's policy entries.

Policies and namespaces live in the kvstore (/porin/policies/<kind>/<ns>/<name>,
/porin/namespaces/<name>), so `porin apply` on any node reaches every
agent; on the embedded store that is the node's own file, which survives
restarts. A copy of the last state seen is kept in the state dir, so an
agent restarted while etcd is down enforces what it enforced before.

Every change is one *reconcile*: compile all local endpoints against the
candidate state (daemon/policy_compile.py), refuse it whole if an
endpoint's entries would not fit, else program it in an order that never
opens a gap: CIDR prefixes and new entries first, then each changed
endpoint's flags and a new revision (established connections re-decide
on their next packet), then stale entries are removed. Unrelated endpoints
keep their revision, so their connections are not touched.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from porin.daemon.kvstore import EtcdStore, Event, KvStoreError, LocalStore
from porin.daemon.policy_compile import (
    RESERVED_LABELS,
    RULE_HOST,
    Compiler,
    EndpointPolicy,
    EntryKey,
    EntryValue,
    IdentityInfo,
    LocalEndpoint,
    NamedPort,
    World,
    assign_cidr_ids,
)
from porin.daemon.policy_model import Kind, Namespace, Policy, Rule, policy_key
from porin.daemon.policy_yaml import PolicyError, parse_document, parse_documents
from porin.daemon.selectors import (
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    identity_labels,
    normalize_labels,
)
from porin.daemon.store import read_json, write_json_atomic
from porin.errors import PorinError
from porin.maps.endpoints import ENDPOINT_F_POLICY_EGRESS, ENDPOINT_F_POLICY_INGRESS
from porin.maps.policy import PolicyMap, PolicyMapKey
from porin.maps.policy_cidr import PolicyCidrMap
from porin.models import Endpoint, EndpointState

log = logging.getLogger("porin.policy")

POLICIES = "/porin/policies/"
IDENTITIES = "/porin/identities/"
NAMESPACES = "/porin/namespaces/"
CACHE_FILE = "policies.json"


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


def _flags(p: EndpointPolicy) -> int:
    return (ENDPOINT_F_POLICY_INGRESS if p.ingress else 0) | (
        ENDPOINT_F_POLICY_EGRESS if p.egress else 0
    )


def POLICIES_KEY(store_key: str) -> str:  # noqa: N802
    return store_key[len(POLICIES) :]


def _store_key(obj: Policy | Namespace) -> str:
    if isinstance(obj, Namespace):
        return NAMESPACES + obj.name
    return POLICIES + obj.key


class PolicyManager:
    def __init__(
        self,
        state_dir: str,
        bpffs_root: str,
        per_endpoint_limit: int,
        total_limit: int,
        cidr_limit: int,
        local_endpoints: Callable[[], list[Endpoint]],
        identities: Callable[[], list[dict[str, Any]]],
        remote_ports: Callable[[], dict[int, tuple[NamedPort, ...]]],
        refresh_endpoints: Callable[[list[int]], None],
        ip_identities: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.cache_path = os.path.join(state_dir, CACHE_FILE)
        self.per_endpoint_limit = per_endpoint_limit
        self.total_limit = total_limit
        self.cidr_limit = cidr_limit
        self.local_endpoints = local_endpoints
        self.identities = identities
        self.remote_ports = remote_ports
        self.refresh_endpoints = refresh_endpoints
        self.ip_identities = ip_identities
        self._ip_identity: dict[str, int] = {}
        self.map = PolicyMap(bpffs_root)
        self.cidr_map = PolicyCidrMap(bpffs_root)
        self.store: LocalStore | EtcdStore | None = None
        self.policies: dict[str, Policy] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.applied_at: dict[str, int] = {}  # policy key -> revision it was applied at
        self.rules: dict[int, tuple[str, Rule]] = {}
        self.programmed: dict[int, Programmed] = {}
        self.cidr_ids: dict[str, int] = {}
        self.revision = 1 + max((e.policy_rev for e in self._pinned_endpoints()), default=0)
        self.reconciles = 0
        self._identities: list[dict[str, Any]] = []
        self._cache_stale = False
        self._wanted = False  # a full reconcile is due
        self._state = threading.Lock()  # short: never held while calling out
        self._reconcile = threading.Lock()  # one reconcile at a time
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancels: list[Callable[[], None]] = []
        self._adopt_pinned()

    # ---------- lifecycle ----------

    def _pinned_endpoints(self) -> list[Any]:
        from porin.maps.endpoints import EndpointsMap

        try:
            with EndpointsMap(os.path.dirname(self.map.path)) as m:
                return m.entries()
        except Exception:
            return []

    def _adopt_pinned(self) -> None:
        """What the datapath enforces from before a restart, so the first
        reconcile rewrites only what changed."""
        by_ep: dict[int, dict[EntryKey, EntryValue]] = {}
        for k, v in self.map.entries():
            by_ep.setdefault(k.ep_id, {})[
                (k.direction, k.identity, k.proto, k.port, k.port_bits)
            ] = EntryValue(v.rule_id, bool(v.flags & 1))
        self.cidr_ids = self.cidr_map.entries()
        self._adopted = by_ep

    def start(self, store: LocalStore | EtcdStore) -> None:
        """Load the stored policies (or the cached copy), program, then follow changes."""
        self.store = store
        try:
            docs = {**store.get_prefix(POLICIES), **store.get_prefix(NAMESPACES)}
            source = store.name
            self._watch()
        except KvStoreError as e:
            cached = read_json(self.cache_path, default={}) or {}
            docs = cached.get("objects", {})
            self._identities = cached.get("identities", [])
            source = f"the cached copy ({e})"
        self._load(docs, source)
        self.reconcile()
        self._thread = threading.Thread(target=self._run, name="policy", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self.store is not None
        for c in self._cancels:
            try:
                c()
            except Exception:
                pass
        self._cancels = [
            self.store.watch_prefix(POLICIES, self._on_change),
            self.store.watch_prefix(NAMESPACES, self._on_change),
            self.store.watch_prefix(IDENTITIES, self.changed),
        ]

    def resync(self) -> None:
        """The kvstore is back: take its state (it may have changed meanwhile), follow it again."""
        if self.store is None:
            return
        try:
            self._watch()
            docs = {**self.store.get_prefix(POLICIES), **self.store.get_prefix(NAMESPACES)}
        except KvStoreError as e:
            log.warning("policy: resync failed, enforcing what is known: %s", e)
            return
        with self._state:
            self.policies, self.namespaces = {}, {}
            self._load(docs, self.store.name)
        self._save_cache()
        self.changed()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for c in self._cancels:
            try:
                c()
            except Exception:
                pass

    def _load(self, docs: dict[str, Any], source: str) -> None:
        for key, doc in sorted(docs.items()):
            try:
                obj = parse_document(doc, key)
            except PolicyError as e:
                log.error("policy: ignoring stored %s: %s", key, e)
                continue
            self._put_local(obj)
        log.info(
            "policy: %d policies, %d namespaces from %s",
            len(self.policies),
            len(self.namespaces),
            source,
        )

    def _put_local(self, obj: Policy | Namespace) -> None:
        if isinstance(obj, Namespace):
            self.namespaces[obj.name] = obj
        else:
            self._number_rules(obj)
            self.policies[obj.key] = obj
            self.applied_at.setdefault(obj.key, self.revision)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            self._dirty.clear()
            if self._stop.is_set():
                return
            try:
                if self._cache_stale:
                    self._cache_stale = False
                    self._save_cache()
                if self._wanted:
                    self._wanted = False
                    self.reconcile()
            except Exception:
                log.exception("policy reconcile failed; retrying")
                self._stop.wait(1.0)
                self.changed()

    def changed(self, *_: object) -> None:
        """Something selectors see moved (endpoints, labels, identities): reconcile soon."""
        self._wanted = True
        self._dirty.set()

    def _on_change(self, ev: Event) -> None:
        key = ev.key
        with self._state:
            if key.startswith(NAMESPACES):
                name = key[len(NAMESPACES) :]
                cur = self.namespaces.get(name)
                if ev.kind == "delete":
                    if cur is None:
                        return
                    del self.namespaces[name]
                else:
                    if cur is not None and cur.document == ev.value:
                        return
                    try:
                        self._put_local(parse_document(ev.value, key))
                    except PolicyError as e:
                        log.error("policy: ignoring %s from the kvstore: %s", key, e)
                        return
            else:
                pkey = key[len(POLICIES) :]
                cur_p = self.policies.get(pkey)
                if ev.kind == "delete":
                    if cur_p is None:
                        return
                    del self.policies[pkey]
                else:
                    if cur_p is not None and cur_p.document == ev.value:
                        return
                    try:
                        obj = parse_document(ev.value, key)
                    except PolicyError as e:
                        log.error("policy: ignoring %s from the kvstore: %s", key, e)
                        return
                    self.applied_at[pkey] = self.revision + 1
                    self._put_local(obj)
        self._cache_stale = True
        self.changed()

    def _save_cache(self) -> None:
        with self._state:
            objects = {_store_key(p): p.document for p in self.policies.values()}
            objects |= {_store_key(n): n.document for n in self.namespaces.values()}
        try:
            write_json_atomic(self.cache_path, {"objects": objects, "identities": self._identities})
        except OSError as e:
            log.warning("policy: cannot write %s: %s", self.cache_path, e)

    # ---------- rule ids ----------

    def _number_rules(self, p: Policy) -> None:
        """Stable ids (the same on every node): a hash of policy and section."""
        for r in p.rules:
            rid = zlib.crc32(f"{p.key}#{r.section}".encode()) & 0x7FFFFFFF
            while (
                rid <= RULE_HOST
                or (rid in self.rules and self.rules[rid][1].section != r.section)
                or (rid in self.rules and self.rules[rid][0] != p.key)
            ):
                rid = (rid + 1) & 0x7FFFFFFF
            r.id = rid
            self.rules[rid] = (p.key, r)

    # ---------- compile and program ----------

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
            mine = _named_ports(ep)
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
        index = _SubjectIndex(policies.values())
        out: dict[int, EndpointPolicy] = {}
        owners: dict[int, str] = {}
        total = 0
        todo = endpoints if endpoints is not None else self.local_endpoints()
        partial = False
        if changed is not None and endpoints is None and cidr_ids == self.cidr_ids:
            with self._state:
                prog = dict(self.programmed)
            new = _SubjectIndex(policies[k] for k in changed if k in policies)
            todo = [ep for ep in todo if _touched(ep, prog, changed, new, comp)]
            keep = {ep.id for ep in todo}
            total = sum(len(p.entries) for i, p in prog.items() if i not in keep)
            partial = True
        for ep in todo:
            if ep.state != EndpointState.READY and endpoints is None:
                continue
            le = _local(ep)
            cand = [p for p in index.candidates(le) if comp.selects(p, le)]
            res = comp.endpoint(le, cand)
            if len(res.entries) > self.per_endpoint_limit:
                raise PolicyTooLarge(
                    f"endpoint {ep.id} ({_ep_name(ep)}) would need {len(res.entries)} policy "
                    f"entries; policyEntriesPerEndpoint allows {self.per_endpoint_limit} "
                    f"(selected by {', '.join(sorted(_selectors(res)))})"
                )
            total += len(res.entries)
            out[ep.id] = res
            owners[ep.id] = _owner(ep)
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
            flags = _flags(want)
            for k, v in want.entries.items():
                if have_entries.get(k) != v:
                    self.map.write(_map_key(ep_id, k), v.rule_id, v.deny)
            gone = [k for k in have_entries if k not in want.entries]
            stale += [_map_key(ep_id, k) for k in gone]
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
                    stale += [_map_key(ep_id, k) for k in old.entries]
                for ep_id, old_entries in adopted.items():
                    stale += [_map_key(ep_id, k) for k in old_entries]
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
            if have is not None and have.owner in ("", _owner(ep)):
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
            self.map.write(_map_key(ep.id, k), v.rule_id, v.deny)
        with self._state:
            self.revision += 1
            p = Programmed(
                _flags(want),
                self.revision,
                want.entries,
                want.selected_by,
                want.contributors,
                _owner(ep),
            )
            old = self.programmed.get(ep.id)
            self.programmed[ep.id] = p
        if old is not None:  # an earlier endpoint of that id: what it had and this one has not
            for k in old.entries:
                if k not in want.entries:
                    self.map.remove(_map_key(ep.id, k))
        self.changed()  # its identity may be new to the other endpoints' rules
        return p.flags, p.rev

    def forget(self, ep: Endpoint) -> None:
        """An endpoint went: its entries go (unless its id already serves another)."""
        with self._state:
            old = self.programmed.get(ep.id)
            if old is not None and old.owner not in ("", _owner(ep)):
                return
            self.programmed.pop(ep.id, None)
        if old:
            for k in old.entries:
                self.map.remove(_map_key(ep.id, k))
        self.changed()

    # ---------- apply / delete ----------

    def apply(self, docs: list[Any], source: str = "input") -> dict[str, Any]:
        """All documents validated and checked to fit, then stored and enforced; or nothing."""
        objs = parse_documents(docs, source)
        with self._state:
            policies, namespaces = dict(self.policies), dict(self.namespaces)
        result: dict[str, list[str]] = {"created": [], "configured": [], "unchanged": []}
        puts = {}
        for obj in objs:
            key = _store_key(obj)
            cur = namespaces.get(obj.name) if isinstance(obj, Namespace) else policies.get(obj.key)
            label = f"{obj.kind if isinstance(obj, Policy) else 'Namespace'} {_display(obj)}"
            if cur is not None and cur.document == obj.document:
                result["unchanged"].append(label)
                continue
            result["configured" if cur is not None else "created"].append(label)
            puts[key] = copy.deepcopy(obj.document)
            if isinstance(obj, Namespace):
                namespaces[obj.name] = obj
            else:
                self._number_rules(obj)
                policies[obj.key] = obj
        if not puts:
            return result
        only_policies = not any(isinstance(o, Namespace) for o in objs)
        changed = {POLICIES_KEY(k) for k in puts} if only_policies else None
        plan = self.plan(policies, namespaces, changed=changed)  # PolicyTooLarge: nothing stored
        with self._state:
            before = self.policies, self.namespaces
            # taken before the store's watch reports our own writes back
            self.policies, self.namespaces = policies, namespaces
        try:
            self._commit(puts, [])
        except PorinError:
            with self._state:
                self.policies, self.namespaces = before
            raise
        with self._state:
            for obj in objs:
                if isinstance(obj, Policy) and _store_key(obj) in puts:
                    self.applied_at[obj.key] = self.revision + 1
        self.reconcile(plan)
        self._cache_stale = True  # written by the worker, off the request's path
        self._dirty.set()
        return result

    def delete_docs(self, docs: list[Any], source: str = "input") -> list[str]:
        """Delete the objects the documents name (all must exist)."""
        objs = parse_documents(docs, source)
        keys = []
        with self._state:
            for obj in objs:
                have = (
                    self.namespaces.get(obj.name)
                    if isinstance(obj, Namespace)
                    else self.policies.get(obj.key)
                )
                if have is None:
                    what = obj.kind if isinstance(obj, Policy) else "Namespace"
                    raise PolicyNotFound(f"{what} {_display(obj)} not found; nothing deleted")
                keys.append(_store_key(obj))
        return self._delete_keys(keys)

    def delete(self, namespace: str, name: str, kind: str | None = None) -> list[str]:
        with self._state:
            found = [
                p.key
                for p in self.policies.values()
                if p.name == name and p.namespace == namespace and (kind is None or p.kind == kind)
            ]
        if not found:
            raise PolicyNotFound(f"policy {namespace + '/' if namespace else ''}{name} not found")
        if len(found) > 1:
            raise PolicyError(
                f"{len(found)} policies are called {name}: name the kind ({', '.join(found)})"
            )
        return self._delete_keys([POLICIES + found[0]])

    def delete_all(self) -> list[str]:
        with self._state:
            keys = [POLICIES + k for k in self.policies]
        return self._delete_keys(keys) if keys else []

    def _delete_keys(self, keys: list[str]) -> list[str]:
        gone = []
        with self._state:
            before = dict(self.policies), dict(self.namespaces)
            for key in keys:
                if key.startswith(NAMESPACES):
                    if self.namespaces.pop(key[len(NAMESPACES) :], None):
                        gone.append(key[len(NAMESPACES) :])
                elif self.policies.pop(key[len(POLICIES) :], None):
                    gone.append(key[len(POLICIES) :])
        try:
            self._commit({}, keys)
        except PorinError:
            with self._state:
                self.policies, self.namespaces = before
            raise
        if any(k.startswith(NAMESPACES) for k in keys):
            self.reconcile()
        else:
            with self._state:
                policies, namespaces = dict(self.policies), dict(self.namespaces)
            changed = {POLICIES_KEY(k) for k in keys}
            try:
                self.reconcile(self.plan(policies, namespaces, changed=changed))
            except PolicyTooLarge:
                self.reconcile()
        self._save_cache()
        return gone

    def _commit(self, puts: dict[str, Any], deletes: list[str]) -> None:
        if self.store is None:
            raise PorinError("the policy engine has not started", http_status=503)
        try:
            self.store.commit(puts, deletes)
        except KvStoreError as e:
            raise PorinError(
                f"the kvstore is unreachable, nothing applied: {e}", http_status=503
            ) from None

    # ---------- reading ----------

    def counters(self) -> dict[int, tuple[int, int]]:
        """rule id -> (packets, bytes), summed over the endpoints' entries."""
        out: dict[int, tuple[int, int]] = {}
        for _, v in self.map.entries():
            p, b = out.get(v.rule_id, (0, 0))
            out[v.rule_id] = (p + v.packets, b + v.bytes)
        return out

    def selected(self) -> dict[str, list[int]]:
        """policy key -> the local endpoints it selects."""
        out: dict[str, set[int]] = {}
        with self._state:
            for ep_id, p in self.programmed.items():
                for keys in p.selected_by.values():
                    for k in keys:
                        out.setdefault(k, set()).add(ep_id)
        return {k: sorted(v) for k, v in out.items()}

    def list(self) -> list[dict[str, Any]]:
        counts = self.counters()
        sel = self.selected()
        with self._state:
            pols = sorted(self.policies.values(), key=lambda p: (p.namespace, p.name, p.kind))
            out = []
            for p in pols:
                hits = sum(counts.get(r.id, (0, 0))[0] for r in p.rules)
                out.append(
                    {
                        "namespace": p.namespace,
                        "name": p.name,
                        "kind": p.kind.value,
                        "selectedEndpoints": sel.get(p.key, []),
                        "revision": self.applied_at.get(p.key, 0),
                        "rules": len(p.rules),
                        "hits": hits,
                    }
                )
        return out

    def find(self, namespace: str, name: str, kind: str | None = None) -> Policy:
        with self._state:
            found = [
                p
                for p in self.policies.values()
                if p.name == name and p.namespace == namespace and (kind is None or p.kind == kind)
            ]
        if not found:
            raise PolicyNotFound(f"policy {namespace + '/' if namespace else ''}{name} not found")
        if len(found) > 1:
            raise PolicyError(f"{len(found)} policies are called {name}: name the kind")
        return found[0]

    def get(self, namespace: str, name: str, kind: str | None = None) -> dict[str, Any]:
        p = self.find(namespace, name, kind)
        counts = self.counters()
        by_rule: dict[int, set[int]] = {}
        with self._state:
            for ep_id, prog in self.programmed.items():
                for v in prog.entries.values():
                    by_rule.setdefault(v.rule_id, set()).add(ep_id)
        selected = self.selected().get(p.key, [])
        return {
            "namespace": p.namespace,
            "name": p.name,
            "kind": p.kind.value,
            "revision": self.applied_at.get(p.key, 0),
            "selectedEndpoints": selected,
            "isolates": sorted(d.value for d in p.isolates),
            "document": p.document,
            "rules": [
                {
                    "id": r.id,
                    "section": r.section,
                    "description": r.describe(),
                    "endpoints": sorted(by_rule.get(r.id, ())),
                    "packets": counts.get(r.id, (0, 0))[0],
                    "bytes": counts.get(r.id, (0, 0))[1],
                }
                for r in p.rules
            ],
        }

    def rule_table(self) -> dict[str, Any]:
        """Rule ids and who selects each endpoint, for `porin monitor` and explain."""
        with self._state:
            rules = {
                str(rid): {
                    "policy": self.policies[key].display if key in self.policies else key,
                    "kind": self.policies[key].kind.value if key in self.policies else "",
                    "section": r.section,
                    "description": r.describe(),
                }
                for rid, (key, r) in self.rules.items()
                if key in self.policies
            }
            rules[str(RULE_HOST)] = {
                "policy": "(node)",
                "kind": "",
                "section": "",
                "description": "the node may always reach its pods",
            }
            selected = {
                str(ep_id): {
                    d: [self.policies[k].display for k in keys if k in self.policies]
                    for d, keys in p.selected_by.items()
                }
                for ep_id, p in self.programmed.items()
            }
            cidrs = {str(i): c for c, i in self.cidr_ids.items()}
        return {"rules": rules, "selectedBy": selected, "cidrIdentities": cidrs}

    def status(self) -> dict[str, Any]:
        with self._state:
            return {
                "policies": len(self.policies),
                "namespaces": len(self.namespaces),
                "revision": self.revision,
                "reconciles": self.reconciles,
                "endpointsEnforced": sum(1 for p in self.programmed.values() if p.flags),
                "entries": sum(len(p.entries) for p in self.programmed.values()),
            }


def _touched(
    ep: Endpoint,
    prog: dict[int, Programmed],
    changed: set[str],
    new: _SubjectIndex,
    comp: Compiler,
) -> bool:
    """Whether a change of the `changed` policies (now as `new`) reaches `ep`."""
    if ep.id not in prog or prog[ep.id].contributors & changed:
        return True
    le = _local(ep)
    return any(comp.selects(p, le) for p in new.candidates(le))


class _SubjectIndex:
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


def _selectors(res: EndpointPolicy) -> set[str]:
    return {k for v in res.selected_by.values() for k in v}


def _map_key(ep_id: int, k: EntryKey) -> PolicyMapKey:
    return PolicyMapKey(ep_id, k[0], k[1], k[2], k[3], k[4])


def _owner(ep: Endpoint) -> str:
    return f"{ep.container_id}/{ep.ifname}/{ep.ip}"


def _named_ports(ep: Endpoint) -> tuple[NamedPort, ...]:
    return tuple(
        NamedPort(p["name"], int(p["containerPort"]), p.get("protocol", "TCP"))
        for p in ep.ports
        if p.get("name")
    )


def _local(ep: Endpoint) -> LocalEndpoint:
    return LocalEndpoint(
        ep.id, ep.identity, normalize_labels(identity_labels(ep.labels)), _named_ports(ep)
    )


def _ep_name(ep: Endpoint) -> str:
    labels = normalize_labels(ep.labels)
    name = labels.get("io.kubernetes.pod.name")
    ns = labels.get(NAMESPACE_LABEL, "default")
    return f"{ns}/{name}" if name else ep.container_id[:12]


def _display(obj: Policy | Namespace) -> str:
    return obj.display if isinstance(obj, Policy) else obj.name


__all__ = ["PolicyManager", "PolicyError", "PolicyNotFound", "Kind", "policy_key"]
