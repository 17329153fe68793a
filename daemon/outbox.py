"""Changes the kvstore could not take yet, kept until it can.

While etcd is unreachable the API still accepts service, policy and
prefilter changes: they take effect on this node at once and their kvstore
writes wait here, coalesced by key (the last write of a key wins), in a file
of the state dir so that an agent restarted during the outage keeps them.
On reconnecting, the agent writes them before it takes the store's state as
the truth: a service deleted during the outage is deleted in the store,
rather than brought back from it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from porin.daemon.kvstore import EtcdStore, KvStoreError, LocalStore
from porin.daemon.store import read_json, write_json_atomic

log = logging.getLogger("porin.kvstore")

DELETE = {"__porin_outbox__": "delete"}  # a key to delete (values are JSON, never this)


class Outbox:
    def __init__(self, store: LocalStore | EtcdStore, state_dir: str) -> None:
        self.store = store
        self.path = os.path.join(state_dir, "kvstore-outbox.json")
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = dict(read_json(self.path, default={}) or {})
        # whether the kvstore was reachable last time anyone looked: while it
        # is not, writes are kept at once instead of waiting for its timeout
        self.online: Callable[[], bool] = lambda: True
        # told when a write failed (the cluster state degrades, and reconnects:
        # a reconnection is what writes the pending changes)
        self.on_failure: Callable[[KvStoreError], None] = lambda e: None

    def write(self, puts: dict[str, Any], deletes: list[str]) -> bool:
        """Write now (True), or keep for later when the kvstore is away (False).
        Earlier pending writes of the same keys go first, so order holds. A
        write that fails tells `on_failure`."""
        with self._lock:
            if not self.online():
                self._queue(puts, deletes)
                return False
            if self._pending:
                self._queue(puts, deletes)
                if self._flush_locked():
                    return True
                failure = KvStoreError("unreachable: changes pending")
            else:
                try:
                    self.store.commit(puts, deletes)
                    return True
                except KvStoreError as e:
                    self._queue(puts, deletes)
                    failure = e
            log.warning(
                "kvstore unreachable: %d change(s) pending: %s", len(self._pending), failure
            )
        self.on_failure(failure)
        return False

    def flush(self) -> bool:
        """Write what is pending (on reconnecting); True when nothing is left."""
        with self._lock:
            return self._flush_locked()

    def pending(self) -> dict[str, Any]:
        """key -> value to put, or None for a delete."""
        with self._lock:
            return {k: (None if v == DELETE else v) for k, v in self._pending.items()}

    def _queue(self, puts: dict[str, Any], deletes: list[str]) -> None:
        # copies, as they will be written: the callers' objects may change later
        self._pending.update(json.loads(json.dumps(puts)))
        self._pending.update(dict.fromkeys(deletes, DELETE))
        write_json_atomic(self.path, self._pending)

    def _flush_locked(self) -> bool:
        if not self._pending:
            return True
        puts = {k: v for k, v in self._pending.items() if v != DELETE}
        deletes = [k for k, v in self._pending.items() if v == DELETE]
        try:
            self.store.commit(puts, deletes)
        except KvStoreError:
            return False
        log.info("kvstore: %d pending change(s) written", len(self._pending))
        self._pending = {}
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return True
