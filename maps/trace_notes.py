"""The `trace_notes` ring buffer of the trace build (bpf/lib/trace.h): the
decisions a traced packet's path wrote, in order. Only the trace build has
it, under <bpffsRoot>/trace."""

from __future__ import annotations

import ctypes

from porin.maps.monitor_events import RingBuffer

TRACE_LB = 1
TRACE_REDIRECT = 2
TRACE_TUNNEL_KEY = 3
TRACE_FIB = 4

TRACE_LB_AFFINITY = 1
TRACE_LB_PICKED = 2
TRACE_LB_FLOW = 3

TRACE_REDIR_PLAIN = 1
TRACE_REDIR_PEER = 2
TRACE_REDIR_NEIGH = 3


class TraceNoteC(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("a", ctypes.c_uint32),
        ("b", ctypes.c_uint32),
        ("c", ctypes.c_uint32),
        ("d", ctypes.c_uint32),
        ("e", ctypes.c_uint32),
    ]


class TraceNotesRing(RingBuffer):
    NAME = "trace_notes"
    SIZE = 1 << 16  # bpf/lib/trace.h

    def notes(self) -> list[TraceNoteC]:
        size = ctypes.sizeof(TraceNoteC)
        return [TraceNoteC.from_buffer_copy(r.ljust(size, b"\0")[:size]) for r in self.drain()]
