"""The `flow_rate` per-CPU array (one entry): each CPU's window of the flow
log's event budget (bpf/lib/flowlog.h). The datapath's own; read only by tests."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key


class FlowRate(ctypes.Structure):
    _fields_ = [("window_start", ctypes.c_uint64), ("count", ctypes.c_uint64)]


class FlowRateMap(PinnedMap[U32Key, FlowRate]):
    NAME = "flow_rate"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = 1
    KEY = U32Key
    VALUE = FlowRate
