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
        out = {}
        for i, name in enumerate(ACTIONS):
            values = self.get_percpu(U32Key(i)) or []
            out[name] = sum(v.value for v in values)
        return out
