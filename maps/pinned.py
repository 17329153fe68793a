"""Generic typed view of one pinned BPF map.

Each map module subclasses `PinnedMap` with the ctypes structures of its
key and value; the sizes are checked against the kernel's view of the map
when it is opened, so a layout drift between C and Python fails loudly.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from typing import ClassVar, Generic, TypeVar

from porin.maps import layouts, syscall

K = TypeVar("K", bound=ctypes.Structure)
V = TypeVar("V", bound=ctypes.Structure)

Layout = tuple[type[ctypes.Structure], type[ctypes.Structure]]  # KEY, VALUE

DEFAULT_BPFFS_ROOT = "/sys/fs/bpf/porin"


class MapNotFound(FileNotFoundError):
    """The pinned map does not exist (agent never started, or wrong bpffs root)."""


class U32Key(ctypes.Structure):
    """The key of an array map: an index."""

    _fields_ = [("index", ctypes.c_uint32)]


def open_pinned(path: str, bpffs_root: str, read_only: bool = False) -> int:
    """The fd of the BPF object pinned at `path`; MapNotFound says what to check."""
    try:
        return syscall.obj_get(path, read_only=read_only)
    except syscall.BpfError as e:
        if e.errno == 2:
            raise MapNotFound(
                f"BPF map {path} not found: is porin-agent running with bpffs root {bpffs_root}?"
            ) from None
        raise


class PinnedMap(Generic[K, V]):
    """A pinned map under a bpffs root, opened by name."""

    # Each map module declares its map once, here: the C side gets the size
    # from SIZE_FLAG (daemon/map_specs.py builds the -D flags and the table of
    # shapes from these), and tests/bpf/test_bpf_map_specs.py compares KEY and
    # VALUE with the C structs field by field.
    NAME: ClassVar[str]
    TYPE: ClassVar[int]  # maps/map_types.py
    FLAGS: ClassVar[int] = 0
    SIZE: ClassVar[int | str]  # max entries, or the agent config attribute that sets them
    SIZE_FLAG: ClassVar[str | None] = None  # the -D flag the C code sizes the map by
    BATCH: ClassVar[int] = 4096
    KEY: ClassVar[type[ctypes.Structure]]
    VALUE: ClassVar[type[ctypes.Structure]]
    # The (KEY, VALUE) layouts of earlier releases, newest first: a pin of one
    # of them is recreated in this layout with its entries carried over
    # (daemon/map_migrate.py), each through `upgrade`. A layout is told by its
    # key and value sizes, so each must differ from this one's and the others'.
    PREVIOUS_LAYOUTS: ClassVar[tuple[Layout, ...]] = ()
    # What the agent refills the map from when it is recreated in another
    # shape (its entries are derived, not lost), or None.
    REBUILT_FROM: ClassVar[str | None] = None

    @classmethod
    def previous_layout(cls, key_size: int, value_size: int) -> Layout | None:
        """The declared previous layout of these sizes, or None."""
        for key, value in cls.PREVIOUS_LAYOUTS:
            if (ctypes.sizeof(key), ctypes.sizeof(value)) == (key_size, value_size):
                return key, value
        return None

    @classmethod
    def upgrade(
        cls, old_key: ctypes.Structure, old_value: ctypes.Structure
    ) -> tuple[ctypes.Structure, ctypes.Structure] | None:
        """An entry of a previous layout in this one, or None to leave it behind.
        Field by name (maps/layouts.py); a map whose fields changed meaning
        overrides this."""
        return layouts.convert(old_key, cls.KEY), layouts.convert(old_value, cls.VALUE)

    @classmethod
    def max_entries_for(cls, cfg: object) -> int:
        """The map's size under an agent config."""
        return int(getattr(cfg, cls.SIZE)) if isinstance(cls.SIZE, str) else cls.SIZE

    def __init__(self, bpffs_root: str = DEFAULT_BPFFS_ROOT, read_only: bool = False) -> None:
        self.path = os.path.join(bpffs_root, self.NAME)
        self.fd = open_pinned(self.path, bpffs_root, read_only)
        info = syscall.map_info(self.fd)
        self.percpu = info.type in syscall.PERCPU_MAP_TYPES
        self.max_entries = info.max_entries
        if info.key_size != ctypes.sizeof(self.KEY) or info.value_size != ctypes.sizeof(self.VALUE):
            os.close(self.fd)
            raise ValueError(
                f"{self.path}: kernel map has key/value size {info.key_size}/{info.value_size}, "
                f"Python layout {ctypes.sizeof(self.KEY)}/{ctypes.sizeof(self.VALUE)}"
            )
        self._stride = (ctypes.sizeof(self.VALUE) + 7) & ~7
        self._ncpu = syscall.possible_cpus() if self.percpu else 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- value buffers (per-CPU maps carry one value per possible CPU) ---

    def _value_buf(self) -> ctypes.Array:
        return ctypes.create_string_buffer(self._stride * self._ncpu)

    def _values_from(self, buf: ctypes.Array | bytes) -> list[V]:
        raw = bytes(buf)
        size = ctypes.sizeof(self.VALUE)
        return [
            self.VALUE.from_buffer_copy(raw[i * self._stride : i * self._stride + size])
            for i in range(self._ncpu)
        ]

    @staticmethod
    def _buf(obj: ctypes.Structure) -> ctypes.Array:
        return ctypes.create_string_buffer(bytes(obj), ctypes.sizeof(obj))

    # --- element operations ---

    def get(self, key: K) -> V | None:
        """The value for `key` (per-CPU maps: see get_percpu), or None."""
        buf = self._value_buf()
        if not syscall.lookup(self.fd, self._buf(key), buf):
            return None
        return self._values_from(buf)[0]

    def get_percpu(self, key: K) -> list[V] | None:
        buf = self._value_buf()
        if not syscall.lookup(self.fd, self._buf(key), buf):
            return None
        return self._values_from(buf)

    def put(self, key: K, value: V, flags: int = syscall.BPF_ANY) -> None:
        if self.percpu:
            raw = b"".join(bytes(value).ljust(self._stride, b"\0") for _ in range(self._ncpu))
            vbuf = ctypes.create_string_buffer(raw, len(raw))
        else:
            vbuf = self._buf(value)
        syscall.update(self.fd, self._buf(key), vbuf, flags)

    def delete(self, key: K) -> bool:
        return syscall.delete(self.fd, self._buf(key))

    def put_many(self, pairs: list[tuple[K, V]]) -> None:
        """Write many entries with BPF_MAP_UPDATE_BATCH (each entry is atomic)."""
        if not pairs:
            return
        if self.percpu:
            for k, v in pairs:
                self.put(k, v)
            return
        ksize, vsize = ctypes.sizeof(self.KEY), ctypes.sizeof(self.VALUE)
        for start in range(0, len(pairs), self.BATCH):
            chunk = pairs[start : start + self.BATCH]
            keys = ctypes.create_string_buffer(
                b"".join(bytes(k) for k, _ in chunk), ksize * len(chunk)
            )
            vals = ctypes.create_string_buffer(
                b"".join(bytes(v) for _, v in chunk), vsize * len(chunk)
            )
            syscall.update_batch(self.fd, keys, vals, len(chunk))

    def delete_many(self, keys: list[K]) -> int:
        """Delete many keys with BPF_MAP_DELETE_BATCH; absent keys are skipped."""
        return self.delete_packed(b"".join(bytes(k) for k in keys), len(keys))

    def delete_packed(self, raw: bytes, count: int) -> int:
        """Delete `count` keys packed back to back in `raw`; returns how many went.

        A key that is already gone stops a batch in the kernel; it is skipped and
        the batch resumed. Maps without batch support are done key by key."""
        ksize = ctypes.sizeof(self.KEY)
        deleted, i = 0, 0
        while i < count:
            n = min(self.BATCH, count - i)
            buf = ctypes.create_string_buffer(raw[i * ksize : (i + n) * ksize], n * ksize)
            try:
                done = syscall.delete_batch(self.fd, buf, n)
            except syscall.BpfError as e:
                if e.errno not in (22, 95, 524):  # EINVAL, EOPNOTSUPP, ENOTSUPP
                    raise
                return deleted + sum(
                    self.delete(self.KEY.from_buffer_copy(raw, (i + j) * ksize))
                    for j in range(count - i)
                )
            deleted += done
            i += done
            if done < n:
                i += 1  # the missing key
        return deleted

    def dump_raw(self) -> tuple[bytes, bytes, int]:
        """All keys and values as two byte strings, read with BPF_MAP_LOOKUP_BATCH.

        Fast path for large maps (conntrack): callers slice the buffers
        themselves. The kernel packs values at value_size, except per-CPU
        values: one 8-byte-aligned copy per possible CPU (`items_percpu_batch`).
        """
        ksize = ctypes.sizeof(self.KEY)
        vsize = self._stride * self._ncpu if self.percpu else ctypes.sizeof(self.VALUE)
        batch = self.BATCH
        keys_out, vals_out, total = [], [], 0
        cursor: ctypes.Array | None = None
        out_batch = ctypes.create_string_buffer(max(ksize, 8))
        while True:
            keys = ctypes.create_string_buffer(ksize * batch)
            vals = ctypes.create_string_buffer(vsize * batch)
            try:
                n, done = syscall.lookup_batch(self.fd, cursor, out_batch, keys, vals, batch)
            except syscall.BpfError as e:
                if e.errno == 28 and batch < 1 << 20:  # ENOSPC: a bucket larger than batch
                    batch *= 4
                    continue
                raise
            keys_out.append(keys.raw[: n * ksize])
            vals_out.append(vals.raw[: n * vsize])
            total += n
            if done:
                break
            cursor = ctypes.create_string_buffer(out_batch.raw, len(out_batch))
        return b"".join(keys_out), b"".join(vals_out), total

    def dump(self, skip_zero: bool = False) -> list[tuple[K, V]]:
        """Every (key, value), read in batches (not for per-CPU maps); with
        `skip_zero`, without the all-zero values (the empty slots of an array)."""
        raw_keys, raw_vals, n = self.dump_raw()
        ks, vs = ctypes.sizeof(self.KEY), ctypes.sizeof(self.VALUE)
        zero = bytes(vs)
        return [
            (
                self.KEY.from_buffer_copy(raw_keys, i * ks),
                self.VALUE.from_buffer_copy(raw_vals, i * vs),
            )
            for i in range(n)
            if not (skip_zero and raw_vals[i * vs : (i + 1) * vs] == zero)
        ]

    def items_percpu_batch(self) -> list[tuple[K, list[V]]]:
        """Every key with its per-CPU values, in a few BPF_MAP_LOOKUP_BATCH calls
        (a per-CPU array of 1,024 counters is one call, not 2,048)."""
        raw_keys, raw_vals, n = self.dump_raw()
        ks, vs = ctypes.sizeof(self.KEY), self._stride * self._ncpu
        return [
            (
                self.KEY.from_buffer_copy(raw_keys, i * ks),
                self._values_from(raw_vals[i * vs : (i + 1) * vs]),
            )
            for i in range(n)
        ]

    def count(self) -> int:
        """How many entries the map holds: batch-read where the kernel can
        (hash and LRU maps), else walked key by key (LPM tries)."""
        try:
            return self.dump_raw()[2]
        except syscall.BpfError as e:
            if e.errno not in (22, 95, 524):  # EINVAL, EOPNOTSUPP, ENOTSUPP
                raise
        return len(self)

    def keys(self) -> Iterator[K]:
        ksize = ctypes.sizeof(self.KEY)
        cur: ctypes.Array | None = None
        out = ctypes.create_string_buffer(ksize)
        while syscall.next_key(self.fd, cur, out):
            yield self.KEY.from_buffer_copy(out.raw)
            cur = ctypes.create_string_buffer(out.raw, ksize)

    def items(self) -> Iterator[tuple[K, V]]:
        """(key, value) pairs; per-CPU maps yield the value summed by `merge_percpu`."""
        for key, values in self.items_percpu():
            yield key, self.merge_percpu(values)

    def items_percpu(self) -> Iterator[tuple[K, list[V]]]:
        for key in list(self.keys()):
            buf = self._value_buf()
            if syscall.lookup(self.fd, self._buf(key), buf):
                yield key, self._values_from(buf)

    def merge_percpu(self, values: list[V]) -> V:
        """Fold per-CPU values into one; maps with per-CPU counters override this."""
        return values[0]

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        removed = 0
        for key in list(self.keys()):
            removed += self.delete(key)
        return removed

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())
