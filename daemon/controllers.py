"""The agent's background loops, as `porin status --verbose` shows them.

Each loop (conntrack GC, the kvstore keepalive, the monitor watch, the flow
log reader) owns a `Controller` and wraps every pass in `run()`: how often
it ran, when it last ran and last succeeded, how long a pass took and the
last error, as Cilium's `cilium status --all-controllers` lists them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Controller:
    name: str
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_run: float = 0.0
    last_success: float = 0.0
    last_duration_ms: float = 0.0
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def run(self) -> Iterator[None]:
        """One pass: recorded as a success unless it raises (the error is re-raised)."""
        started, mono = time.time(), time.monotonic()
        try:
            yield
        except BaseException as e:
            self._done(started, mono, f"{type(e).__name__}: {e}")
            raise
        self._done(started, mono, "")

    def failed(self, error: str) -> None:
        """A pass that reported its failure instead of raising it."""
        now = time.time()
        with self._lock:
            self.runs += 1
            self.failures += 1
            self.consecutive_failures += 1
            self.last_run = now
            self.last_error = error

    def _done(self, started: float, mono: float, error: str) -> None:
        with self._lock:
            self.runs += 1
            self.last_run = started
            self.last_duration_ms = round((time.monotonic() - mono) * 1000, 1)
            if error:
                self.failures += 1
                self.consecutive_failures += 1
                self.last_error = error
            else:
                self.consecutive_failures = 0
                self.last_success = started

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "runs": self.runs,
                "failures": self.failures,
                "consecutiveFailures": self.consecutive_failures,
                "lastRun": self.last_run or None,
                "lastSuccess": self.last_success or None,
                "lastDurationMs": self.last_duration_ms,
                "lastError": self.last_error,
            }
