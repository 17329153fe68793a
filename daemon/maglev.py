"""Maglev lookup tables, computed in user space and pushed to lb4_maglev.

Each backend gets a permutation of the table's slots from two hashes of its
name (offset, skip; the table size is prime so every skip is a full cycle),
and backends take turns claiming their next preferred free slot until each
holds its quota. Quotas follow the weights exactly (largest remainder), so
shares are balanced to within one slot.

Updates are minimally disruptive, which plain Maglev is only nearly: given
the table in use, slots of backends that stay are kept (a backend over its
new quota gives up its least preferred slots), and only the freed slots are
claimed again. Removing a backend therefore moves no flow of any other
backend, and adding one moves about 1/(N+1) of the flows, all to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 16381


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def permutation_params(name: str, m: int) -> tuple[int, int]:
    """(offset, skip) of a backend's preference list over `m` slots."""
    h = hashlib.sha256(name.encode()).digest()
    offset = int.from_bytes(h[:8], "little") % m
    skip = int.from_bytes(h[8:16], "little") % (m - 1) + 1
    return offset, skip


def quotas(weights: dict[str, int], m: int) -> dict[str, int]:
    """Slots per backend: proportional to weight, summing to m (largest remainder)."""
    live = {b: w for b, w in weights.items() if w > 0}
    if not live:
        return {}
    total = sum(live.values())
    exact = {b: m * w / total for b, w in live.items()}
    q = {b: int(x) for b, x in exact.items()}
    rest = m - sum(q.values())
    for b in sorted(live, key=lambda b: (-(exact[b] - q[b]), b))[:rest]:
        q[b] += 1
    return q


def build_table(
    weights: dict[str, int],
    m: int = DEFAULT_TABLE_SIZE,
    previous: Sequence[str | None] | None = None,
) -> list[str | None]:
    """The table: slot -> backend name (None only when there are no backends)."""
    if not is_prime(m):
        raise ValueError(f"Maglev table size {m} is not prime")
    quota = quotas(weights, m)
    if not quota:
        return [None] * m
    params = {b: permutation_params(b, m) for b in quota}
    table: list[str | None] = [None] * m
    count = dict.fromkeys(quota, 0)

    if previous is not None and len(previous) == m:
        for slot, owner in enumerate(previous):
            if owner in quota:
                table[slot] = owner
                count[owner] += 1
        for b in quota:
            excess = count[b] - quota[b]
            if excess > 0:
                _release_least_preferred(table, b, params[b], excess, m)
                count[b] = quota[b]

    next_j = dict.fromkeys(quota, 0)
    order = sorted(quota)
    pending = [b for b in order if count[b] < quota[b]]
    while pending:
        still = []
        for b in pending:
            offset, skip = params[b]
            j = next_j[b]
            while True:
                slot = (offset + j * skip) % m
                j += 1
                if table[slot] is None:
                    break
            next_j[b] = j
            table[slot] = b
            count[b] += 1
            if count[b] < quota[b]:
                still.append(b)
        pending = still
    return table


def _release_least_preferred(
    table: list[str | None], b: str, param: tuple[int, int], n: int, m: int
) -> None:
    offset, skip = param
    inv = pow(skip, -1, m)
    owned = [s for s, o in enumerate(table) if o == b]
    # position of each slot in b's preference list: larger = less preferred
    owned.sort(key=lambda s: ((s - offset) * inv) % m, reverse=True)
    for s in owned[:n]:
        table[s] = None
