"""Switches the datapath's monitor events off when no `porin monitor` runs.

A monitor clears `monitor_config` when it exits, but one killed with
SIGKILL cannot: with tracing left on, every packet would go on trying a
full ring buffer. A running monitor holds an exclusive lock on
`lock_path(bpffs_root)` and removes it when it exits; when the switch is on
and the lock is free, the monitor is gone and the agent turns the switch off
and removes the file. It checks under a shared lock, which a monitor
starting at that moment waits out.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading

from porin.daemon.controllers import Controller
from porin.maps.monitor_config import MonitorConfigMap, lock_path

log = logging.getLogger("porin.monitor")


class MonitorWatch:
    def __init__(self, bpffs_root: str, interval: float = 2.0) -> None:
        self.bpffs_root = bpffs_root
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.controller = Controller("monitor-watch")

    def check_once(self) -> bool:
        """Turn the switch off if it is on and no monitor holds the lock: True if it did."""
        with MonitorConfigMap(self.bpffs_root) as cfg:
            if not cfg.flags():
                return False
            try:
                fd = os.open(lock_path(self.bpffs_root), os.O_RDONLY)
            except FileNotFoundError:
                fd = -1
            try:
                if fd >= 0:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return False  # a monitor is running
                    # the dead monitor's lock file (a monitor opening it right now
                    # sees it gone once it has the lock, and makes a new one)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock_path(self.bpffs_root))
                cfg.set_flags(0)
            finally:
                if fd >= 0:
                    os.close(fd)
        log.warning("monitor events were on with no porin monitor running (killed?): turned off")
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="monitor-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.controller.run():
                    self.check_once()
            except Exception:
                log.exception("monitor watch failed")
