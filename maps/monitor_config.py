"""The `monitor_config` array (one entry): what the datapath reports to
`porin monitor` (bpf/lib/monitor.h). Zero, the default, reports nothing."""

from __future__ import annotations

import ctypes

from porin.maps.pinned import PinnedMap, U32Key

MONITOR_F_DROPS = 1
MONITOR_F_TRACE = 2


Index = U32Key  # the array index


class MonitorConfig(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class MonitorConfigMap(PinnedMap[Index, MonitorConfig]):
    NAME = "monitor_config"
    KEY = Index
    VALUE = MonitorConfig

    def set_flags(self, flags: int) -> None:
        self.put(Index(0), MonitorConfig(flags=flags))

    def flags(self) -> int:
        cur = self.get(Index(0))
        return cur.flags if cur is not None else 0
