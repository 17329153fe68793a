"""`policy_scratch`: the policy decisions of the packet being handled, per
CPU (bpf/lib/verdict.h). Only the datapath uses it; it is declared here so
that its pin is known (daemon/map_specs.py)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key


class PolicyScratch(ctypes.Structure):
    _fields_ = [
        ("rule", ctypes.c_uint32 * 2),
        ("ep_id", ctypes.c_uint16 * 2),
        ("reason", ctypes.c_uint8 * 2),
        ("decided", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class PolicyScratchMap(PinnedMap[U32Key, PolicyScratch]):
    NAME = "policy_scratch"
    TYPE = map_types.PERCPU_ARRAY
    SIZE = 1
    KEY = U32Key
    VALUE = PolicyScratch
