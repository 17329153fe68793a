"""The `metrics` map: per-CPU packet/byte counters by (reason, direction), an array.

Mirrors bpf/lib/metrics.h; reason and direction names are read from
bpf/lib/reasons.h, the single source of truth shared with the datapath.
The uplinks' XDP program counts its verdicts in a map of its own, by reason
and XDP action (maps/xdp_metrics.py); what `MetricsMap` reports includes
them, as (reason, ingress).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass

from porin.bpf import SOURCE_DIR
from porin.maps import map_types
from porin.maps.pinned import PinnedMap

_DEFINE = re.compile(r"^#define\s+(REASON|DROP|DIR)_(\w+)\s+(\d+)\s*//\s*(.*)$")


@dataclass(frozen=True)
class Reason:
    code: int
    name: str  # e.g. INVALID_SIP
    description: str

    @property
    def is_drop(self) -> bool:
        return self.code >= 128


@functools.cache
def _table() -> tuple[dict[int, Reason], dict[int, str]]:
    reasons: dict[int, Reason] = {}
    dirs: dict[int, str] = {}
    for line in (SOURCE_DIR / "lib" / "reasons.h").read_text().splitlines():
        m = _DEFINE.match(line.strip())
        if not m:
            continue
        kind, name, code, desc = m.group(1), m.group(2), int(m.group(3)), m.group(4).strip()
        if kind == "DIR":
            dirs[code] = name.lower()
        else:
            reasons[code] = Reason(code, name, desc)
    return reasons, dirs


def reasons() -> dict[int, Reason]:
    """Every verdict reason the datapath can count, by code."""
    return _table()[0]


def reason_by_name(name: str) -> Reason:
    for r in reasons().values():
        if r.name == name:
            return r
    raise KeyError(name)


def direction_name(code: int) -> str:
    return _table()[1].get(code, f"dir-{code}")


def direction_code(name: str) -> int:
    for code, n in _table()[1].items():
        if n == name:
            return code
    raise KeyError(name)


def reason_text(code: int) -> str:
    r = reasons().get(code)
    return r.description if r else f"unknown reason {code}"


class MetricsKey(ctypes.Structure):
    """Index into the per-CPU array: reason * 4 + direction (METRICS_INDEX in C)."""

    _fields_ = [("index", ctypes.c_uint32)]

    @classmethod
    def of(cls, reason: int, direction: int) -> MetricsKey:
        return cls(index=(reason << 2) | (direction & 3))

    @property
    def reason(self) -> int:
        return self.index >> 2

    @property
    def dir(self) -> int:
        return self.index & 3


class MetricsValue(ctypes.Structure):
    """{packets, bytes}: also the prefilter's counters (maps/prefilter_counts.py)."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


def sum_percpu(values: list[MetricsValue]) -> MetricsValue:
    """{packets, bytes} summed: a per-CPU value's copies, or several counters."""
    return MetricsValue(packets=sum(v.packets for v in values), bytes=sum(v.bytes for v in values))


@dataclass(frozen=True)
class Metric:
    reason: int
    direction: int
    packets: int
    bytes: int

    @property
    def reason_text(self) -> str:
        return reason_text(self.reason)

    @property
    def reason_name(self) -> str:
        """The reason's name in bpf/lib/reasons.h without its prefix, e.g. NODEPORT_DSR."""
        r = reasons().get(self.reason)
        return r.name if r else str(self.reason)

    @property
    def direction_text(self) -> str:
        return direction_name(self.direction)

    @property
    def is_drop(self) -> bool:
        return self.reason >= 128


class MetricsMap(PinnedMap[MetricsKey, MetricsValue]):
    NAME = "metrics"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = 256 * 4
    SIZE_FLAG = "METRICS_SLOTS"
    KEY = MetricsKey
    VALUE = MetricsValue

    def merge_percpu(self, values: list[MetricsValue]) -> MetricsValue:
        return sum_percpu(values)

    def _xdp_by_reason(self) -> dict[int, MetricsValue]:
        """The XDP program's counts by reason; none where it is not loaded."""
        from porin.maps.xdp_metrics import XdpMetricsMap

        root = os.path.dirname(self.path)
        if not os.path.exists(os.path.join(root, XdpMetricsMap.NAME)):
            return {}
        with XdpMetricsMap(root, read_only=True) as x:
            return x.by_reason()

    def metrics(self) -> list[Metric]:
        """Every (reason, direction) that has counted a packet, XDP's included."""
        counts: dict[tuple[int, int], MetricsValue] = {}
        for k, values in self.items_percpu_batch():
            v = self.merge_percpu(values)
            if v.packets:
                counts[(k.reason, k.dir)] = v
        ingress = direction_code("ingress")
        for reason, v in self._xdp_by_reason().items():
            key = (reason, ingress)
            counts[key] = sum_percpu([counts.get(key, MetricsValue()), v])
        return [Metric(r, d, v.packets, v.bytes) for (r, d), v in sorted(counts.items())]

    def count(self, reason: int, direction: int) -> Metric:
        v = self.get_percpu(MetricsKey.of(reason, direction))
        m = self.merge_percpu(v) if v is not None else MetricsValue()
        if direction == direction_code("ingress"):
            m = sum_percpu([m, self._xdp_by_reason().get(reason, MetricsValue())])
        return Metric(reason, direction, m.packets, m.bytes)
