"""`prefilter4_slots` and `prefilter4_l16`: the indexes in front of the
prefilter's hash and trie (bpf/lib/prefilter.h), so a listed /32 is dropped
with one inlined array lookup and passing traffic skips the trie where no
prefix is listed."""

from __future__ import annotations

import ctypes
import socket
import sys

from porin.maps import map_types
from porin.maps.pinned import PinnedMap, U32Key

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
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]

    @classmethod
    def of(cls, ip: str, flags: int) -> PrefilterSlot:
        return cls(ip=(ctypes.c_uint8 * 4)(*socket.inet_aton(ip)), flags=flags)

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

    def used(self) -> dict[int, PrefilterSlot]:
        return {k.index: v for k, v in self.items() if v.flags & SLOT_USED}


class L16Count(ctypes.Structure):
    _fields_ = [("prefixes", ctypes.c_uint32)]


class PrefilterL16Map(PinnedMap[U32Key, L16Count]):
    NAME = "prefilter4_l16"
    TYPE = map_types.ARRAY
    SIZE = L16_SIZE
    SIZE_FLAG = "PREFILTER_L16_SIZE"
    KEY = U32Key
    VALUE = L16Count

    def counts(self) -> dict[int, int]:
        return {k.index: v.prefixes for k, v in self.items() if v.prefixes}


def l16_indexes(cidr: str) -> range:
    """The /16s (top 16 bits) a prefix covers part of."""
    addr, _, plen = cidr.partition("/")
    n, bits = int.from_bytes(socket.inet_aton(addr), "big"), int(plen)
    first = n >> 16
    return range(first, first + (1 << (16 - bits)) if bits < 16 else first + 1)
