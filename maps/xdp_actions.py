"""`xdp_actions`: per-CPU count of each XDP action bpf_xdp.c returned
(aborted, drop, pass, tx, redirect), as Katran counts them."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key

ACTIONS = ("aborted", "drop", "pass", "tx", "redirect")


class ActionCount(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


class XdpActionsMap(PinnedMap[U32Key, ActionCount]):
    NAME = "xdp_actions"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = len(ACTIONS)
    KEY = U32Key
    VALUE = ActionCount

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(ACTIONS, 0)
        for k, values in self.items_percpu_batch():
            if k.index < len(ACTIONS):
                out[ACTIONS[k.index]] = sum(v.value for v in values)
        return out
