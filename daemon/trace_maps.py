"""The trace build's maps: copies of the live ones, made before each trace.

`porin trace` runs a packet through the trace build of the programs
(bpf/lib/trace.h), whose maps are pinned under <bpffsRoot>/trace. Before a
run, every map of the trace build is made equal to the live map of the same
name, read through a read-only fd: tables (endpoints, services, backends,
Maglev, conntrack, NAT, affinity, ipcache, policy, config) are copied as
they are; counters (metrics, lost events, rate windows, XDP actions) start
from zero, so that what they hold after the run is the traced packet's
alone; the monitor switches every kind of event on and the flow log off.

A copy is raw bytes, map by map, so the mirror knows no layout beyond the
shape map_specs gives: hash and LRU maps and arrays in batches, LPM tries
(which have no batch operations) key by key.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass

from porin.daemon.map_specs import MapSpec
from porin.maps import map_types, syscall
from porin.maps.monitor_config import MONITOR_F_DROPS, MONITOR_F_POLICY, MONITOR_F_TRACE

log = logging.getLogger(__name__)

# counters and state of the live observers: zero in the trace build
ZEROED = {
    "metrics",
    "monitor_lost",
    "flow_rate",
    "flow_lost",
    "flow_config",
    "xdp_metrics",
    "monitor_config",
}
BATCH_BYTES = 4 << 20  # per batch call, keys and values together
ARRAYS = (map_types.ARRAY, map_types.PERCPU_ARRAY)
_BATCH_ERRNOS = (22, 95, 524)  # EINVAL, EOPNOTSUPP, ENOTSUPP: no batch ops for this type


@dataclass
class Table:
    """One map's entries as raw bytes: key -> value."""

    name: str
    entries: dict[bytes, bytes]


def _value_size(spec: MapSpec) -> int:
    if spec.map_type in map_types.PERCPU:
        return ((spec.value_size + 7) & ~7) * syscall.possible_cpus()
    return spec.value_size


def read_all(fd: int, spec: MapSpec) -> dict[bytes, bytes]:
    """Every entry of the map behind `fd`."""
    ks, vs = spec.key_size, _value_size(spec)
    batch = max(1, min(4096, BATCH_BYTES // (ks + vs)))
    out: dict[bytes, bytes] = {}
    cursor: ctypes.Array | None = None
    token = ctypes.create_string_buffer(max(ks, 8))
    try:
        while True:
            keys = ctypes.create_string_buffer(ks * batch)
            vals = ctypes.create_string_buffer(vs * batch)
            try:
                n, done = syscall.lookup_batch(fd, cursor, token, keys, vals, batch)
            except syscall.BpfError as e:
                if e.errno == 28:  # ENOSPC: one hash bucket holds more than a batch
                    batch *= 4
                    continue
                raise
            for i in range(n):
                out[keys.raw[i * ks : (i + 1) * ks]] = vals.raw[i * vs : (i + 1) * vs]
            if done:
                return out
            cursor = ctypes.create_string_buffer(token.raw, len(token))
    except syscall.BpfError as e:
        if e.errno not in _BATCH_ERRNOS:
            raise
    out.clear()  # an LPM trie: key by key
    cur: ctypes.Array | None = None
    key = ctypes.create_string_buffer(ks)
    val = ctypes.create_string_buffer(vs)
    while syscall.next_key(fd, cur, key):
        if syscall.lookup(fd, key, val):
            out[key.raw] = val.raw
        cur = ctypes.create_string_buffer(key.raw, ks)
    return out


def write_all(fd: int, spec: MapSpec, entries: dict[bytes, bytes]) -> None:
    ks, vs = spec.key_size, _value_size(spec)
    items = list(entries.items())
    batch = max(1, min(4096, BATCH_BYTES // (ks + vs)))
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        keys = ctypes.create_string_buffer(b"".join(k for k, _ in chunk), ks * len(chunk))
        vals = ctypes.create_string_buffer(b"".join(v for _, v in chunk), vs * len(chunk))
        try:
            syscall.update_batch(fd, keys, vals, len(chunk))
        except syscall.BpfError as e:
            if e.errno not in _BATCH_ERRNOS:
                raise
            for k, v in chunk:
                syscall.update(
                    fd, ctypes.create_string_buffer(k, ks), ctypes.create_string_buffer(v, vs)
                )


def copy_array(src: int, dst: int, spec: MapSpec, zero: bool = False) -> None:
    """Every slot of array `src` into array `dst` (all zero with `zero`),
    batch by batch with no entry decoded: an array of 131,072 backends is
    some 30 calls, not a dict of 131,072 entries."""
    ks, vs = spec.key_size, _value_size(spec)
    batch = max(1, min(8192, BATCH_BYTES // (ks + vs)))
    cursor: ctypes.Array | None = None
    token = ctypes.create_string_buffer(max(ks, 8))
    while True:
        keys = ctypes.create_string_buffer(ks * batch)
        vals = ctypes.create_string_buffer(vs * batch)
        n, done = syscall.lookup_batch(src, cursor, token, keys, vals, batch)
        if n:
            if zero:
                vals = ctypes.create_string_buffer(vs * n)
            syscall.update_batch(dst, keys, vals, n)
        if done:
            return
        cursor = ctypes.create_string_buffer(token.raw, len(token))


def clear(fd: int, spec: MapSpec, present: dict[bytes, bytes]) -> None:
    """Empty the map (an array: every slot zero); `present` is what it holds."""
    if spec.map_type in (map_types.ARRAY, map_types.PERCPU_ARRAY):
        zero = bytes(_value_size(spec))
        write_all(fd, spec, {k: zero for k, v in present.items() if v != zero})
        return
    for k in present:
        syscall.delete(fd, ctypes.create_string_buffer(k, spec.key_size))


class MapMirror:
    """The live maps and their trace-build twins, opened once."""

    def __init__(self, specs: list[MapSpec], live_root: str, trace_root: str) -> None:
        self.specs: list[MapSpec] = []
        self.live: dict[str, int] = {}
        self.trace: dict[str, int] = {}
        try:
            for s in specs:
                if s.map_type == map_types.RINGBUF:
                    continue
                # a map only the live build has (bpf_sock.c's) or only a
                # config the live agent does not run is no part of a trace
                if not os.path.exists(os.path.join(trace_root, s.name)) or not os.path.exists(
                    os.path.join(live_root, s.name)
                ):
                    continue
                self.live[s.name] = syscall.obj_get(os.path.join(live_root, s.name), read_only=True)
                self.trace[s.name] = syscall.obj_get(os.path.join(trace_root, s.name))
                self.specs.append(s)
        except BaseException:
            self.close()
            raise
        self.copied: dict[str, dict[bytes, bytes]] = {}

    def close(self) -> None:
        for fd in [*self.live.values(), *self.trace.values()]:
            os.close(fd)
        self.live.clear()
        self.trace.clear()

    def spec(self, name: str) -> MapSpec:
        return next(s for s in self.specs if s.name == name)

    def sync(self) -> None:
        """Make every trace map what the live one holds now (counters zero)."""
        self.copied = {}
        for s in self.specs:
            t = self.trace[s.name]
            if s.map_type in ARRAYS:
                zero = s.name in ZEROED
                copy_array(t if zero else self.live[s.name], t, s, zero=zero)
                continue
            clear(t, s, read_all(t, s))
            if s.name in ZEROED:
                self.copied[s.name] = {}
                continue
            entries = read_all(self.live[s.name], s)
            write_all(t, s, entries)
            self.copied[s.name] = entries
        flags = MONITOR_F_DROPS | MONITOR_F_TRACE | MONITOR_F_POLICY
        mon = self.spec("monitor_config")
        syscall.update(
            self.trace["monitor_config"],
            ctypes.create_string_buffer(bytes(mon.key_size), mon.key_size),
            ctypes.create_string_buffer(flags.to_bytes(4, "little").ljust(mon.value_size, b"\0")),
        )

    def changes(self, name: str) -> tuple[dict[bytes, bytes], dict[bytes, tuple[bytes, bytes]]]:
        """What the run did to map `name` (a hash, LRU or LPM map): (entries
        added, entries changed: old, new)."""
        s = self.spec(name)
        before = self.copied.get(name, {})
        after = read_all(self.trace[name], s)
        added = {k: v for k, v in after.items() if k not in before}
        changed = {k: (before[k], v) for k, v in after.items() if k in before and before[k] != v}
        return added, changed

    def lookup(self, name: str, key: bytes) -> bytes | None:
        """One entry of the trace copy of map `name`."""
        s = self.spec(name)
        val = ctypes.create_string_buffer(_value_size(s))
        if not syscall.lookup(self.trace[name], ctypes.create_string_buffer(key, len(key)), val):
            return None
        return val.raw

    def read(self, name: str) -> dict[bytes, bytes]:
        """The trace copy of map `name` as it is now."""
        return read_all(self.trace[name], self.spec(name))
