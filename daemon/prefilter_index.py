"""The prefilter's prefix index (bpf/lib/prefilter.h): `prefilter4_l16` by the
top 16 bits of a source address and `prefilter4_l24` blocks of 256 /24s, so a
packet from a listed prefix is dropped, and one from an unlisted /16 passes,
on one or two array lookups; the LPM trie is asked only where a prefix
longer than /24 starts, or when the blocks have run out.

`plan` computes what the index must hold for the listed prefixes; `PrefixIndex`
writes only what changed, a block before the /16 entry that points at it,
and empties a block only once nothing points at it.
"""

from __future__ import annotations

import ipaddress
import logging

from porin.maps.pinned import U32Key
from porin.maps.prefilter_l24 import BLOCK, PrefilterL24Map
from porin.maps.prefilter_slots import IndexValue, PrefilterL16Map

log = logging.getLogger("porin.prefilter")

IDX_PREFIX = 1 << 31  # low bits: the covering prefix's counter
IDX_BLOCK = 1 << 30  # low bits: the /24 block
IDX_TRIE = 1 << 29  # the trie decides
IDX_MASK = (1 << 24) - 1
MAX_COUNTER = IDX_MASK

Block = tuple[int, ...]


def plan(prefixes: dict[str, int]) -> dict[int, int | Block]:
    """For listed prefixes (CIDR -> counter, none a /32): each /16 any of them
    touches -> its l16 value, or the 256 values of its /24 block. The longest
    prefix covering a range is the one that counts, as in the trie."""
    short: dict[int, tuple[int, int]] = {}  # /16 -> (length, counter), lengths <= 16
    mid: dict[int, dict[int, tuple[int, int]]] = {}  # /16 -> /24 -> same, 17..24
    long: dict[int, set[int]] = {}  # /16 -> /24s where a prefix longer than /24 starts
    for cidr, counter in prefixes.items():
        if not 0 < counter <= MAX_COUNTER:
            raise ValueError(f"{cidr}: counter {counter} out of range")
        net = ipaddress.IPv4Network(cidr)
        n, plen = int(net.network_address), net.prefixlen
        hi, third = n >> 16, (n >> 8) & 0xFF
        if plen <= 16:
            for h in range(hi, hi + (1 << (16 - plen))):
                if h not in short or short[h][0] < plen:
                    short[h] = (plen, counter)
        elif plen <= 24:
            block = mid.setdefault(hi, {})
            for x in range(third, third + (1 << (24 - plen))):
                if x not in block or block[x][0] < plen:
                    block[x] = (plen, counter)
        else:
            long.setdefault(hi, set()).add(third)
    out: dict[int, int | Block] = {}
    for h in set(short) | set(mid) | set(long):
        base = IDX_PREFIX | short[h][1] if h in short else 0
        if h not in mid and h not in long:
            out[h] = base
            continue
        block, deep = mid.get(h, {}), long.get(h, set())
        out[h] = tuple(
            IDX_TRIE if x in deep else IDX_PREFIX | block[x][1] if x in block else base
            for x in range(BLOCK)
        )
    return out


class PrefixIndex:
    """The index maps as this process last wrote them: read once, then kept
    (the agent's prefilter is their only writer), and read again after a
    write failed part way."""

    def __init__(self, l16: PrefilterL16Map, l24: PrefilterL24Map) -> None:
        self.l16, self.l24 = l16, l24
        self.blocks = l24.max_entries // BLOCK
        self._warned = False
        self._have: dict[int, int] | None = None  # /16 -> value, the non-zero ones
        self._contents: dict[int, Block] = {}  # block -> its values, the used ones

    def sync(self, prefixes: dict[str, int]) -> None:
        """Make the index say what `plan(prefixes)` says (the trie must hold
        `prefixes` already; prefixes that went are taken out of it after)."""
        want = plan(prefixes)
        if self._have is None:
            self._have, self._contents = self.l16.values(), self.l24.blocks()
        try:
            self._apply(want, self._have, self._contents)
        except BaseException:
            self._have = None
            raise

    def _apply(
        self, want: dict[int, int | Block], have: dict[int, int], contents: dict[int, Block]
    ) -> None:
        in_use = {v & IDX_MASK for v in have.values() if v & IDX_BLOCK}
        free = iter(sorted(set(range(self.blocks)) - in_use))
        writes: list[tuple[int, int]] = []
        for h, w in sorted(want.items()):
            cur = have.get(h, 0)
            if isinstance(w, tuple):
                if cur & IDX_BLOCK and contents.get(cur & IDX_MASK) == w:
                    continue
                b = next(free, None)
                if b is None:
                    if not self._warned:
                        log.warning(
                            "prefilter: more than %d /16s hold prefixes longer than /16; "
                            "packets from the others are looked up in the trie",
                            self.blocks,
                        )
                        self._warned = True
                    w = IDX_TRIE
                else:
                    self.l24.write_block(b, w)
                    contents[b] = w
                    w = IDX_BLOCK | b
            if cur != w:
                writes.append((h, w))
        writes += [(h, 0) for h in have if h not in want]
        self.l16.put_many([(U32Key(h), IndexValue(v)) for h, v in writes])
        for h, v in writes:
            if v:
                have[h] = v
            else:
                have.pop(h, None)
        still = {v & IDX_MASK for v in have.values() if v & IDX_BLOCK}
        for b in in_use - still:
            self.l24.write_block(b, (0,) * BLOCK)
            contents.pop(b, None)
