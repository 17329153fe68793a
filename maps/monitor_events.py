"""The `monitor_events` ring buffer: datapath events for `porin monitor`.

Mirrors `struct monitor_event` in bpf/lib/monitor.h. `RingBuffer` consumes
a pinned BPF ring buffer without libbpf: the kernel maps the consumer
position (one page, writable), then the producer position (one page) and
the data area twice in a row, read-only, so a record that wraps around is
still contiguous. Records start with an 8-byte header (length with BUSY and
DISCARD bits, page offset) and are 8-byte aligned.

A ring buffer has one consumer position: two monitors at once would take
events from each other, so `porin monitor` holds a lock while it reads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import time

from porin.maps import map_types, syscall
from porin.maps.pinned import DEFAULT_BPFFS_ROOT, open_pinned

RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SZ = 8
MONITOR_CAPTURE = 128
MONITOR_TYPE_NAMES = {1: "drop", 2: "trace", 3: "policy-verdict"}
# CT_* of bpf/lib/verdict.h: what conntrack said of the packet
CT_STATUS_NAMES = {0: "", 1: "new", 2: "established", 3: "reply", 4: "related"}


class MonitorEventC(ctypes.Structure):
    _fields_ = [
        ("ktime_ns", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("cap_len", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("ct_status", ctypes.c_uint8),
        ("rule_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * MONITOR_CAPTURE),
    ]

    @property
    def type_name(self) -> str:
        return MONITOR_TYPE_NAMES.get(self.type, str(self.type))

    @property
    def ct_status_name(self) -> str:
        return CT_STATUS_NAMES.get(self.ct_status, str(self.ct_status))

    @property
    def packet(self) -> bytes:
        return bytes(self.data)[: min(self.cap_len, MONITOR_CAPTURE)]


class RingBuffer:
    """Reader of the pinned `monitor_events` ring buffer."""

    NAME = "monitor_events"
    TYPE = map_types.RINGBUF
    SIZE = 1 << 20  # bytes: about 6,000 events
    SIZE_FLAG = "MONITOR_RING_SIZE"

    def __init__(self, bpffs_root: str = DEFAULT_BPFFS_ROOT) -> None:
        self.path = os.path.join(bpffs_root, self.NAME)
        self.fd = open_pinned(self.path, bpffs_root)
        try:
            info = syscall.map_info(self.fd)
            if info.type != map_types.RINGBUF:
                raise ValueError(f"{self.path} is no ring buffer (map type {info.type})")
            self.size = info.max_entries
            self._page = mmap.PAGESIZE
            self._consumer = mmap.mmap(
                self.fd, self._page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._producer = mmap.mmap(
                self.fd,
                self._page + 2 * self.size,
                mmap.MAP_SHARED,
                mmap.PROT_READ,
                offset=self._page,
            )
            self._poll = select.epoll()
            self._poll.register(self.fd, select.EPOLLIN)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            self._poll.close()
            self._producer.close()
            self._consumer.close()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _positions(self) -> tuple[int, int]:
        cons = struct.unpack_from("<Q", self._consumer, 0)[0]
        prod = struct.unpack_from("<Q", self._producer, 0)[0]
        return cons, prod

    def skip_pending(self) -> None:
        """Forget what is in the buffer (events from before this reader)."""
        _cons, prod = self._positions()
        struct.pack_into("<Q", self._consumer, 0, prod)

    def drain(self) -> list[bytes]:
        """Every committed record, oldest first; their space goes back to the kernel."""
        cons, prod = self._positions()
        out = []
        while cons < prod:
            off = self._page + (cons & (self.size - 1))
            hdr = struct.unpack_from("<I", self._producer, off)[0]
            if hdr & RINGBUF_BUSY_BIT:
                break  # still being written
            length = hdr & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)
            if not hdr & RINGBUF_DISCARD_BIT:
                start = off + RINGBUF_HDR_SZ
                out.append(self._producer[start : start + length])
            cons += (length + RINGBUF_HDR_SZ + 7) & ~7
            struct.pack_into("<Q", self._consumer, 0, cons)
        return out

    def events(self) -> list[MonitorEventC]:
        size = ctypes.sizeof(MonitorEventC)
        return [MonitorEventC.from_buffer_copy(r.ljust(size, b"\0")[:size]) for r in self.drain()]

    def wait(self, timeout: float) -> bool:
        """Block until the kernel signals new data, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return bool(self._poll.poll(max(0.0, deadline - time.monotonic())))
            except InterruptedError:
                continue
