"""The `monitor_config` array (one entry): what the datapath reports to
`porin monitor` (bpf/lib/monitor.h). Zero, the default, reports nothing."""

from __future__ import annotations

import ctypes
import hashlib
import os

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key

MONITOR_F_DROPS = 1
MONITOR_F_TRACE = 2
MONITOR_F_POLICY = 4  # policy verdicts of new connections
LOCK_DIR = "/run"


def lock_path(bpffs_root: str) -> str:
    """The file a running `porin monitor` holds an exclusive lock on: one per node
    (per bpffs root). The agent clears the switch when nobody holds it."""
    tag = hashlib.sha1(os.path.abspath(bpffs_root).encode()).hexdigest()[:12]
    return os.path.join(LOCK_DIR, f"porin-monitor-{tag}.lock")


Index = U32Key  # the array index


class MonitorConfig(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class MonitorConfigMap(PinnedMap[Index, MonitorConfig]):
    NAME = "monitor_config"
    TYPE = map_types.ARRAY
    SIZE = 1
    KEY = Index
    VALUE = MonitorConfig

    def set_flags(self, flags: int) -> None:
        self.put(Index(0), MonitorConfig(flags=flags))

    def flags(self) -> int:
        cur = self.get(Index(0))
        return cur.flags if cur is not None else 0
