"""Both conntrack tables read and written as one: `ct4_global` (every
tracked flow, an LRU) and `ct4_confirmed` (the copies of confirmed flows,
which the datapath puts back when the LRU evicted their entry).
"""

from __future__ import annotations

from porin.maps.conntrack import Connection, ConntrackMap, CtEntry, CtKey, decode, monotonic_seconds
from porin.maps.conntrack_confirmed import ConntrackConfirmedMap
from porin.maps.pinned import DEFAULT_BPFFS_ROOT


class Conntrack:
    """ct4_global and ct4_confirmed under one bpffs root."""

    def __init__(self, bpffs_root: str = DEFAULT_BPFFS_ROOT, read_only: bool = False) -> None:
        self.flows = ConntrackMap(bpffs_root, read_only)
        try:
            self.copies = ConntrackConfirmedMap(bpffs_root, read_only)
        except Exception:
            self.flows.close()
            raise
        self.tables: tuple[ConntrackMap, ConntrackMap] = (self.flows, self.copies)
        self.max_entries = self.flows.max_entries

    def close(self) -> None:
        for t in self.tables:
            t.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: CtKey) -> CtEntry | None:
        """The flow's entry; or its copy, when the LRU evicted the entry."""
        e = self.flows.get(key)
        return e if e is not None else self.copies.get(key)

    def put(self, key: CtKey, entry: CtEntry) -> None:
        """The flow's entry (and its copy, when it has one)."""
        self.flows.put(key, entry)
        if self.copies.get(key) is not None:
            self.copies.put(key, entry)

    def delete(self, key: CtKey) -> bool:
        return any([t.delete(key) for t in self.tables])

    def keys(self) -> list[CtKey]:
        return [k for k, _ in self.raw_entries()]

    def raw_entries(self) -> list[tuple[CtKey, CtEntry]]:
        """Every flow: its entry, or its copy when only that is left."""
        flows = self.flows.raw_entries()
        have = {bytes(k) for k, _ in flows}
        return flows + [(k, e) for k, e in self.copies.raw_entries() if bytes(k) not in have]

    def connections(self) -> list[Connection]:
        now = monotonic_seconds()
        flows = self.flows.raw_entries()
        have = {bytes(k) for k, _ in flows}
        copies = {bytes(k): (k, e) for k, e in self.copies.raw_entries()}
        out = []
        for k, e in flows:
            c = decode(k, e, now)
            if bytes(k) in copies:  # the GC may have made it: the entry's flag lags
                c = Connection(**{**c.to_json(), "protected": True, "unprotected": False})
            out.append(c)
        for raw, (k, e) in copies.items():
            if raw not in have:
                out.append(Connection(**{**decode(k, e, now).to_json(), "evicted": True}))
        return out

    def flush(self) -> int:
        """Every entry and copy; returns how many flows were tracked."""
        n = len(self.raw_entries())
        for t in self.tables:
            t.flush()
        return n

    def adopt_legacy_service_entries(self, drop_legacy: bool) -> int:
        return self.flows.adopt_legacy_service_entries(drop_legacy)
