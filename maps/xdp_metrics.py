"""`xdp_metrics`: per-CPU {packets, bytes} of bpf_xdp.c's verdicts by
(reason, XDP action), indexed reason * 8 + action (XDP_METRICS_INDEX in C).

One counter per verdict gives both what the `metrics` map gives for the tc
programs (by reason; XDP sees only ingress) and Katran's per-action counters
(aborted, drop, pass, tx, redirect). `MetricsMap.metrics()` folds the former
into its rows (maps/metrics.py); `totals()` gives the latter.
"""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.metrics import MetricsValue, sum_percpu
from porin.maps.pinned import PinnedMap

ACTIONS = ("aborted", "drop", "pass", "tx", "redirect")


class XdpMetricsKey(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32)]

    @classmethod
    def of(cls, reason: int, action: int) -> XdpMetricsKey:
        return cls(index=(reason << 3) | (action & 7))

    @property
    def reason(self) -> int:
        return self.index >> 3

    @property
    def action(self) -> int:
        return self.index & 7


class XdpMetricsMap(PinnedMap[XdpMetricsKey, MetricsValue]):
    NAME = "xdp_metrics"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = 256 * 8
    SIZE_FLAG = "XDP_METRICS_SLOTS"
    KEY = XdpMetricsKey
    VALUE = MetricsValue

    def merge_percpu(self, values: list[MetricsValue]) -> MetricsValue:
        return sum_percpu(values)

    def counts(self) -> dict[tuple[int, int], MetricsValue]:
        """{(reason, action): {packets, bytes}} of every pair that counted a packet."""
        out = {}
        for k, values in self.items_percpu_batch():
            v = self.merge_percpu(values)
            if v.packets:
                out[(k.reason, k.action)] = v
        return out

    def by_reason(self) -> dict[int, MetricsValue]:
        """{reason: {packets, bytes}}, the actions summed."""
        out: dict[int, MetricsValue] = {}
        for (reason, _), v in self.counts().items():
            out[reason] = sum_percpu([out.get(reason, MetricsValue()), v])
        return out

    def totals(self) -> dict[str, int]:
        """Packets by XDP action, the reasons summed."""
        out = dict.fromkeys(ACTIONS, 0)
        for (_, action), v in self.counts().items():
            if action < len(ACTIONS):
                out[ACTIONS[action]] += v.packets
        return out
