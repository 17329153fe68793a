"""Endpoint events, delivered to the reconcilers outside the endpoint lock.

The endpoint manager publishes one event per change as its last step (an
ADD ends at "ready, event published"); one thread hands each event, in
order, to every subscriber of its type: the service manager (a node port
balances over this node's own backends) and the cluster state (the
endpoint's ipcache entry in the kvstore) and the policy engine (who its
selectors select). A
subscriber that fails is logged and the others still run. A subscriber may
take its own locks and call back into the endpoint manager: no lock is
held while it runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from porin.models import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointAdded:
    endpoint: Endpoint


@dataclass(frozen=True)
class EndpointRemoved:
    endpoint: Endpoint


@dataclass(frozen=True)
class EndpointRelabeled:
    endpoint: Endpoint  # as it is now
    before: Endpoint  # its labels and identity before


Event = EndpointAdded | EndpointRemoved | EndpointRelabeled
E = TypeVar("E", EndpointAdded, EndpointRemoved, EndpointRelabeled)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], object]]] = {}
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    def subscribe(self, kind: type[E], handler: Callable[[E], object]) -> None:
        self._subscribers.setdefault(kind, []).append(handler)

    def publish(self, event: Event) -> None:
        with self._idle:
            self._pending += 1
        if self._thread is None:  # not started (tests, restore): deliver here
            self._deliver(event)
            return
        self._queue.put(event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Block until every published event was delivered (False on timeout)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        try:
            for handler in self._subscribers.get(type(event), []):
                try:
                    handler(event)
                except Exception:
                    log.exception("%s handler %s failed", type(event).__name__, handler)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
