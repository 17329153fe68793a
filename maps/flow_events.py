"""The `flow_events` ring buffer: flow events for the agent's flow log.

Mirrors `struct flow_event` in bpf/lib/flowlog.h. Read like the monitor's
ring (maps/monitor_events.py), by the agent alone (daemon/flows.py).
"""

from __future__ import annotations

import ctypes

from porin.maps.monitor_events import RingBuffer

FLOW_CAPTURE = 128
FLOW_NEW, FLOW_REPLY, FLOW_DROP = 1, 2, 3


class FlowEventC(ctypes.Structure):
    _fields_ = [
        ("ktime_ns", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("cap_len", ctypes.c_uint16),
        ("rev_nat", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("ct_status", ctypes.c_uint8),
        ("policy", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("data", ctypes.c_uint8 * FLOW_CAPTURE),
    ]

    @property
    def packet(self) -> bytes:
        return bytes(self.data)[: min(self.cap_len, FLOW_CAPTURE)]


class FlowRing(RingBuffer):
    NAME = "flow_events"
    SIZE = 1 << 20  # bytes: about 6,000 events
    SIZE_FLAG = "FLOW_RING_SIZE"

    def flow_events(self) -> list[FlowEventC]:
        size = ctypes.sizeof(FlowEventC)
        return [FlowEventC.from_buffer_copy(r.ljust(size, b"\0")[:size]) for r in self.drain()]
