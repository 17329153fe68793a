"""`prefilter4_slots` and `prefilter4_l16`: the indexes in front of the
prefilter's hash and trie (bpf/lib/prefilter.h), so a listed /32 is dropped
with one inlined array lookup and a listed prefix with one or two (the /16,
then its /24 block in `prefilter4_l24`); daemon/prefilter_index.py computes
the prefix index."""

from __future__ import annotations

import ctypes
import socket
import sys

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key
from porin.maps.prefilter_exact import REBUILT_FROM

SLOT_USED = 1
SLOT_SHARED = 2
HASH_MUL = 2654435761
L16_SIZE = 1 << 16


def slot_bits(slots: int) -> int:
    return slots.bit_length() - 1


def slots_for(map_size: int) -> int:
    """Slots for `map_size` addresses: a power of two, at least four per address."""
    n = 1
    while n < 4 * map_size:
        n <<= 1
    return n


def slot_of(ip: str, bits: int) -> int:
    """The slot of `ip`, as the datapath computes it from the address as the
    packet carries it (read as a native-endian 32-bit word)."""
    word = int.from_bytes(socket.inet_aton(ip), sys.byteorder)
    return ((word * HASH_MUL) & 0xFFFFFFFF) >> (32 - bits)


class PrefilterSlot(ctypes.Structure):
    _fields_ = [
        ("ip", ctypes.c_uint8 * 4),
        ("flags", ctypes.c_uint32),
        ("counter", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]

    @classmethod
    def of(cls, ip: str, flags: int, counter: int) -> PrefilterSlot:
        return cls(ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(ip)), flags=flags, counter=counter)

    @property
    def address(self) -> str:
        return socket.inet_ntoa(bytes(self.ip))


class PrefilterSlotsMap(PinnedMap[U32Key, PrefilterSlot]):
    NAME = "prefilter4_slots"
    TYPE = map_types.ARRAY
    SIZE = "prefilter_slots"
    SIZE_FLAG = "PREFILTER_SLOTS"
    KEY = U32Key
    VALUE = PrefilterSlot
    REBUILT_FROM = REBUILT_FROM

    def used(self) -> dict[int, PrefilterSlot]:
        return {k.index: v for k, v in self.dump() if v.flags & SLOT_USED}


class IndexValue(ctypes.Structure):
    """A prefix index entry (PREFILTER_IDX_* in bpf/lib/prefilter.h)."""

    _fields_ = [("value", ctypes.c_uint32)]


class PrefilterL16Map(PinnedMap[U32Key, IndexValue]):
    NAME = "prefilter4_l16"
    TYPE = map_types.ARRAY
    SIZE = L16_SIZE
    SIZE_FLAG = "PREFILTER_L16_SIZE"
    KEY = U32Key
    VALUE = IndexValue

    def values(self) -> dict[int, int]:
        """The entries that are not 0, by /16."""
        return {k.index: v.value for k, v in self.dump(skip_zero=True)}
