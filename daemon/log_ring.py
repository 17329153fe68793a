"""The agent's last log lines, kept in memory for `porin sysdump` (GET /v1/debug/log).

The agent logs to stderr (journald or a runtime's log); this handler keeps a
copy of the newest lines, so a support bundle has them wherever stderr went.
"""

from __future__ import annotations

import collections
import logging
import threading


class LogRing(logging.Handler):
    def __init__(self, lines: int = 2000) -> None:
        super().__init__()
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad log call must not break the agent
            return
        with self._mutex:
            self._lines.append(line)

    def tail(self, n: int) -> list[str]:
        with self._mutex:
            lines = list(self._lines)
        return lines[-n:] if n > 0 else lines


RING = LogRing()
