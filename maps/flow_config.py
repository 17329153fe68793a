"""The `flow_config` array (one entry): whether the datapath reports flow
events, and its per-CPU budget of events per second (bpf/lib/flowlog.h).
Only the agent writes it (daemon/flows.py); zero, the default, reports
nothing."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key


class FlowConfig(ctypes.Structure):
    _fields_ = [("enabled", ctypes.c_uint32), ("rate", ctypes.c_uint32)]


class FlowConfigMap(PinnedMap[U32Key, FlowConfig]):
    NAME = "flow_config"
    TYPE = map_types.ARRAY
    SIZE = 1
    KEY = U32Key
    VALUE = FlowConfig

    def set(self, enabled: bool, rate: int) -> None:
        self.put(U32Key(0), FlowConfig(enabled=int(enabled), rate=rate))

    def current(self) -> FlowConfig:
        return self.get(U32Key(0)) or FlowConfig()
