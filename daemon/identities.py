"""Security identities: allocated cluster-wide from label sets, released when
no endpoint on any node has used them for a grace period.

Keys in the kvstore (the embedded store for one node):

    /porin/identities/<id>               {"labels": {...}}
    /porin/identity-labels/<hash>        <id>             (the label set's id)
    /porin/identity-users/<id>/<node>    {"endpoints": n} (the node's lease)
    /porin/identity-next                 the highest id ever handed out

Each node publishes, under its lease, how many of its endpoints use each
identity; a node that stops loses its keys with its lease. Every node runs
the collector: an identity with no user key, seen so for `grace` seconds in
a row, is released (Cilium's identity GC, 15 min by default): the grace
period outlives any packet still carrying the id in flight or in a
conntrack entry's policy verdict, and a restarted agent starts its watch
afresh, so it only ever waits longer.

Releasing and reusing race safely without transactions. The collector
deletes the label key first, then looks at the users again: if a user
appeared meanwhile it puts the label key back and keeps the id. An
allocation publishes its use first, then checks that the label key still
names the id and the id still exists: if not, the collector won, and the
allocation starts over (getting a new id). Ids are never handed out twice:
`identity-next` only grows (the collector raises it to the id it releases,
so a crashed allocator's id is not reused either), and policy engines drop
a released id's entries when their watch of /porin/identities/ fires.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from porin.daemon.controllers import Controller
from porin.daemon.kvstore import EtcdStore, KvStoreError, LocalStore
from porin.daemon.store import read_json, write_json_atomic
from porin.maps.ipcache import IDENTITY_FIRST_ALLOCATED, RESERVED_IDENTITIES

log = logging.getLogger("porin.identity")

IDENTITIES = "/porin/identities/"
IDENTITY_LABELS = "/porin/identity-labels/"
IDENTITY_USERS = "/porin/identity-users/"
IDENTITY_NEXT = "/porin/identity-next"
# an id handed to an endpoint still being created counts as used until the
# endpoint is ready (or this long, if its creation failed)
PENDING_SECONDS = 120.0


def canonical_labels(labels: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


def labels_key(labels: dict[str, str]) -> str:
    return IDENTITY_LABELS + hashlib.sha256(canonical_labels(labels).encode()).hexdigest()[:32]


class Identities:
    """This node's side of the identities: allocation, usage, collection."""

    def __init__(
        self,
        store: LocalStore | EtcdStore,
        node: str = "",
        grace: float = 900.0,
        local_usage: Callable[[], Counter] = Counter,
        lease: Callable[[], object] = lambda: None,
        known_path: str = "",
    ) -> None:
        self.store = store
        self.node = node
        self.grace = grace
        self.local_usage = local_usage  # identity -> endpoints of this node using it
        self.lease = lease  # the node's lease, for its user keys
        self.released = 0
        self.controller = Controller("identity-gc")
        self._cache: dict[str, int] = {}
        # every label set's identity in the cluster when last listed (list()),
        # kept in the state dir: with the kvstore away, a pod whose labels any
        # node uses gets their identity, even after this agent restarted
        self.known_path = known_path
        self._known: dict[str, int] = {}
        if known_path:
            stored = read_json(known_path, default={}) or {}
            self._known = {str(k): int(v) for k, v in stored.items() if isinstance(v, int)}
        # label sets handed an identity while the kvstore was away: checked
        # against it on reconnection (revalidate)
        self._away: dict[str, tuple[dict[str, str], int]] = {}  # canon -> labels, id
        self._pending: dict[int, float] = {}
        self._unused_since: dict[int, float] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------- allocation ----------

    def allocate(self, labels: dict[str, str]) -> int:
        """The label set's identity, marked used by this node before it is returned."""
        canon, key = canonical_labels(labels), labels_key(labels)
        with self._lock:
            try:
                return self._allocate(labels, canon, key)
            except KvStoreError:
                known = self._cache.get(canon) or self._known.get(canon)
                if known is None:
                    raise
                # the kvstore is away: the identity this node, or the cluster
                # when last listed, gives these labels (ids are never reused,
                # so it names no other label set). publish_usage says so again
                # on reconnection, and revalidate() checks it is still allocated
                self._pending[known] = time.monotonic() + PENDING_SECONDS
                self._away[canon] = (dict(labels), known)
                return known

    def _allocate(self, labels: dict[str, str], canon: str, key: str) -> int:
        """allocate() with the lock held; KvStoreError when etcd is away."""
        for _ in range(100):
            ident = self._cache.get(canon) or self._find_or_create(labels, key)
            self._pending[ident] = time.monotonic() + PENDING_SECONDS
            self._publish_one(ident)
            if self._still_allocated(ident, key):
                self._cache[canon] = ident
                self._known[canon] = ident
                return ident
            # the collector released it meanwhile: start over, with a new id
            self._cache.pop(canon, None)
            self._pending.pop(ident, None)
            self._publish_one(ident)
        raise KvStoreError("could not allocate an identity")

    def _find_or_create(self, labels: dict[str, str], key: str) -> int:
        for _ in range(1000):
            found = self.store.get_prefix(key).get(key)
            if found is not None:
                return int(found)
            taken = {int(k[len(IDENTITIES) :]) for k in self.store.get_prefix(IDENTITIES)}
            floor = max(self._next(), IDENTITY_FIRST_ALLOCATED - 1)
            cand = max(taken | {floor}) + 1
            if not self.store.create(IDENTITIES + str(cand), {"labels": labels}):
                continue  # another agent took that id: look again
            self._raise_next(cand)
            if self.store.create(key, cand):
                return cand
            self.store.delete(IDENTITIES + str(cand))  # lost the race for these labels
        raise KvStoreError("could not allocate an identity")

    def _still_allocated(self, ident: int, key: str) -> bool:
        label_id = self.store.get_prefix(key).get(key)
        return label_id == ident and IDENTITIES + str(ident) in self.store.get_prefix(
            IDENTITIES + str(ident)
        )

    def _next(self) -> int:
        v = self.store.get_prefix(IDENTITY_NEXT).get(IDENTITY_NEXT)
        return int(v) if isinstance(v, int) else 0

    def _raise_next(self, ident: int) -> None:
        if self._next() < ident:
            self.store.put(IDENTITY_NEXT, ident)

    # ---------- usage ----------

    def _wanted(self, usage: Counter | None = None) -> dict[int, int]:
        now = time.monotonic()
        self._pending = {i: t for i, t in self._pending.items() if t > now}
        usage = self.local_usage() if usage is None else usage
        want = {i: n for i, n in usage.items() if n > 0}
        # an endpoint now counts for it: the mark has done its job
        self._pending = {i: t for i, t in self._pending.items() if i not in want}
        for i in self._pending:
            want[i] = max(want.get(i, 0), 1)
        return want

    def _publish_one(self, ident: int) -> None:
        n = self._wanted().get(ident, 0)
        key = f"{IDENTITY_USERS}{ident}/{self.node}"
        if n:
            self.store.put(key, {"endpoints": n}, lease=self.lease())
        else:
            self.store.delete(key)

    def publish_usage(self) -> None:
        """Make this node's user keys say what its endpoints use (after every
        endpoint change, and on every connection: the lease may be new)."""
        usage = self.local_usage()  # before our lock: the endpoints' lock comes first
        with self._lock:
            want = self._wanted(usage)
            mine = {}
            for key, value in self.store.get_prefix(IDENTITY_USERS).items():
                ident, _, node = key[len(IDENTITY_USERS) :].partition("/")
                if node == self.node and ident.isdigit():
                    mine[int(ident)] = value
            for ident, n in want.items():
                # a put even when unchanged: the key takes the current lease
                key = f"{IDENTITY_USERS}{ident}/{self.node}"
                self.store.put(key, {"endpoints": n}, lease=self.lease())
            for ident in set(mine) - set(want):
                self.store.delete(f"{IDENTITY_USERS}{ident}/{self.node}")

    def users(self) -> dict[int, dict[str, int]]:
        """identity -> {node: endpoints using it there}."""
        out: dict[int, dict[str, int]] = {}
        for key, value in self.store.get_prefix(IDENTITY_USERS).items():
            ident, _, node = key[len(IDENTITY_USERS) :].partition("/")
            if ident.isdigit() and isinstance(value, dict):
                out.setdefault(int(ident), {})[node] = int(value.get("endpoints", 0))
        return out

    # ---------- collection ----------

    def collect(self) -> list[int]:
        """One pass: release what nobody has used for the grace period."""
        now = time.monotonic()
        allocated = {
            int(k[len(IDENTITIES) :]): v for k, v in self.store.get_prefix(IDENTITIES).items()
        }
        users = self.users()
        released = []
        with self._lock:
            self._unused_since = {
                i: t for i, t in self._unused_since.items() if i in allocated and not users.get(i)
            }
            for ident, value in sorted(allocated.items()):
                if users.get(ident):
                    continue
                since = self._unused_since.setdefault(ident, now)
                if now - since >= self.grace and self._release(ident, value):
                    released.append(ident)
        return released

    def _release(self, ident: int, value: Any) -> bool:
        labels = value.get("labels", {}) if isinstance(value, dict) else {}
        key = labels_key(labels)
        self._raise_next(ident)
        if self.store.get_prefix(key).get(key) == ident:
            self.store.delete(key)  # no new allocation finds it from here on
        if self.store.get_prefix(f"{IDENTITY_USERS}{ident}/"):
            self.store.create(key, ident)  # an allocation got in first: it keeps it
            self._unused_since.pop(ident, None)
            return False
        self.store.delete(IDENTITIES + str(ident))
        self._unused_since.pop(ident, None)
        self._cache = {c: i for c, i in self._cache.items() if i != ident}
        self.released += 1
        log.info(
            "identity %d (%s) released: no endpoint used it for %.0f s",
            ident,
            canonical_labels(labels),
            self.grace,
        )
        return True

    def start(self, connected: Callable[[], bool]) -> None:
        """Collect every grace/4 (at most a minute apart) while the kvstore is reached."""
        interval = min(60.0, max(0.2, self.grace / 4))

        def loop() -> None:
            while not self._stop.wait(interval):
                if not connected():
                    continue
                try:
                    with self.controller.run():
                        self.publish_usage()
                        self.collect()
                except KvStoreError as e:
                    log.debug("identity collection skipped: %s", e)

        self._thread = threading.Thread(target=loop, name="identity-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # ---------- views ----------

    def list(self) -> list[dict[str, Any]]:
        """Every identity and its labels (the policy engine's view)."""
        out = [{"id": i, "labels": {n: ""}} for i, n in RESERVED_IDENTITIES.items()]
        known = {}
        for key, value in sorted(self.store.get_prefix(IDENTITIES).items()):
            labels = value.get("labels", {}) if isinstance(value, dict) else {}
            out.append({"id": int(key[len(IDENTITIES) :]), "labels": labels})
            known[canonical_labels(labels)] = out[-1]["id"]
        self._remember(known)
        return sorted(out, key=lambda x: x["id"])

    def _remember(self, known: dict[str, int]) -> None:
        with self._lock:
            if known == self._known:
                return
            self._known = known
        if self.known_path:
            try:
                write_json_atomic(self.known_path, known)
            except OSError as e:  # a full state dir: kept in memory meanwhile
                log.warning("cannot keep the known identities in %s: %s", self.known_path, e)

    def revalidate(self) -> dict[str, int]:
        """The kvstore is back: allocate again the label sets handed out while
        it was away. Returns canonical labels -> identity for those whose
        identity is not the one they were given (it was released meanwhile)."""
        with self._lock:
            away, self._away = self._away, {}
        moved = {}
        for canon, (labels, given) in away.items():
            try:
                ident = self._allocate_or_raise(labels)
            except KvStoreError:
                with self._lock:  # away again: at the next reconnection
                    self._away.setdefault(canon, (labels, given))
                continue
            if ident != given:
                moved[canon] = ident
        return moved

    def _allocate_or_raise(self, labels: dict[str, str]) -> int:
        with self._lock:
            return self._allocate(labels, canonical_labels(labels), labels_key(labels))

    def list_with_usage(self) -> list[dict[str, Any]]:
        """list() with, for allocated ids, the endpoints using each on every
        node and how long it has been unused (as this node saw it)."""
        users = self.users()
        now = time.monotonic()
        out = []
        for x in self.list():
            if x["id"] < IDENTITY_FIRST_ALLOCATED:
                out.append({**x, "reserved": True})
                continue
            by_node = users.get(x["id"], {})
            row = {**x, "endpoints": sum(by_node.values()), "nodes": by_node}
            since = self._unused_since.get(x["id"])
            if not by_node and since is not None:
                row["unusedSeconds"] = round(now - since)
                row["releasedInSeconds"] = max(0, round(self.grace - (now - since)))
            out.append(row)
        return out
