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

This module holds the lifecycle, the store and apply/delete;
daemon/policy_program.py compiles and programs, daemon/policy_views.py
answers the read side, daemon/policy_state.py has what they share.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

from porin.daemon.kvstore import EtcdStore, Event, KvStoreError, LocalStore
from porin.daemon.outbox import Outbox
from porin.daemon.policy_compile import (
    RULE_HOST,
    EntryKey,
    EntryValue,
    NamedPort,
)
from porin.daemon.policy_model import Namespace, Policy, Rule
from porin.daemon.policy_program import PolicyProgrammer
from porin.daemon.policy_state import (
    IDENTITIES,
    NAMESPACES,
    POLICIES,
    PolicyNotFound,
    PolicyTooLarge,
    Programmed,
    display,
    policy_key_of,
    store_key,
)
from porin.daemon.policy_views import PolicyViews
from porin.daemon.policy_yaml import PolicyError, parse_document, parse_documents
from porin.daemon.store import read_json, write_json_atomic
from porin.errors import PorinError
from porin.maps.policy import PolicyMap
from porin.maps.policy_cidr import PolicyCidrMap
from porin.models import Endpoint

log = logging.getLogger("porin.policy")

CACHE_FILE = "policies.json"

__all__ = ["PolicyError", "PolicyManager", "PolicyNotFound", "PolicyTooLarge"]


class PolicyManager(PolicyProgrammer, PolicyViews):
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
        # writes the kvstore cannot take yet (daemon/outbox.py); None: refuse them
        self.outbox: Outbox | None = None
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
            self._putlocal_endpoint(obj)
        log.info(
            "policy: %d policies, %d namespaces from %s",
            len(self.policies),
            len(self.namespaces),
            source,
        )

    def _putlocal_endpoint(self, obj: Policy | Namespace) -> None:
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
                        self._putlocal_endpoint(parse_document(ev.value, key))
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
                    self._putlocal_endpoint(obj)
        self._cache_stale = True
        self.changed()

    def _save_cache(self) -> None:
        with self._state:
            objects = {store_key(p): p.document for p in self.policies.values()}
            objects |= {store_key(n): n.document for n in self.namespaces.values()}
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

    # ---------- apply / delete ----------

    def apply(self, docs: list[Any], source: str = "input") -> dict[str, Any]:
        """All documents validated and checked to fit, then stored and enforced; or nothing."""
        objs = parse_documents(docs, source)
        with self._state:
            policies, namespaces = dict(self.policies), dict(self.namespaces)
        result: dict[str, list[str]] = {"created": [], "configured": [], "unchanged": []}
        puts = {}
        for obj in objs:
            key = store_key(obj)
            cur = namespaces.get(obj.name) if isinstance(obj, Namespace) else policies.get(obj.key)
            label = f"{obj.kind if isinstance(obj, Policy) else 'Namespace'} {display(obj)}"
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
        changed = {policy_key_of(k) for k in puts} if only_policies else None
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
                if isinstance(obj, Policy) and store_key(obj) in puts:
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
                    raise PolicyNotFound(f"{what} {display(obj)} not found; nothing deleted")
                keys.append(store_key(obj))
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
            changed = {policy_key_of(k) for k in keys}
            try:
                self.reconcile(self.plan(policies, namespaces, changed=changed))
            except PolicyTooLarge:
                self.reconcile()
        self._save_cache()
        return gone

    def _commit(self, puts: dict[str, Any], deletes: list[str]) -> None:
        if self.store is None:
            raise PorinError("the policy engine has not started", http_status=503)
        if self.outbox is not None:  # with etcd: kept for later while it is away
            self.outbox.write(puts, deletes)
            return
        try:
            self.store.commit(puts, deletes)
        except KvStoreError as e:
            raise PorinError(
                f"the kvstore is unreachable, nothing applied: {e}", http_status=503
            ) from None
