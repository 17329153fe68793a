"""Thin ctypes wrapper around the bpf(2) syscall.

Only what Porin needs: open a pinned object, element operations, batch
lookups, object info and BPF_PROG_TEST_RUN. No bcc import, so the CLI and
the CNI plugin stay fast.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

from porin.maps import map_types

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

_NR_BPF = 321  # x86_64

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_F_RDONLY = 1 << 3

PERCPU_MAP_TYPES = map_types.PERCPU  # map types whose values are per CPU


class BpfError(OSError):
    """A bpf(2) call failed; errno and a message naming the operation."""


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("pad", ctypes.c_uint8 * 64),
    ]


def _addr(buf: ctypes.Array | ctypes.Structure | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """Run one bpf(2) command; raise BpfError naming `what` on failure."""
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def obj_get(path: str, read_only: bool = False) -> int:
    """Open a pinned BPF object and return its fd."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=_addr(raw), file_flags=BPF_F_RDONLY if read_only else 0)
    return bpf(BPF_OBJ_GET, attr, f"open pinned object {path}")


def obj_pin(fd: int, path: str) -> None:
    """Pin the BPF object `fd` at `path` on a bpffs."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    bpf(BPF_OBJ_PIN, _ObjAttr(pathname=_addr(raw), bpf_fd=fd), f"pin {path}")


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to the map ids."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


def prog_info(fd: int) -> tuple[int, list[int]]:
    """The loaded program `fd`: its id and the ids of the maps it uses."""
    ids = (ctypes.c_uint32 * 64)()
    info = _ProgInfo(nr_map_ids=len(ids), map_ids=_addr(ids))
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "get program info")
    return info.id, list(ids[: min(info.nr_map_ids, len(ids))])


class _GetIdAttr(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


def prog_name_by_id(prog_id: int) -> str:
    """The name of the loaded program with this id ("" if it is gone)."""
    try:
        fd = bpf(13, _GetIdAttr(id=prog_id), "get program by id")  # BPF_PROG_GET_FD_BY_ID
    except BpfError:
        return ""
    try:
        info = _ProgInfo()
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
        bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "get program info")
        return info.name.decode(errors="replace")
    finally:
        os.close(fd)


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "get map info")
    return info


BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("rest", ctypes.c_uint64 * 4),  # the attach type's own part of the union: zero
    ]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [
        ("link_fd", ctypes.c_uint32),
        ("new_prog_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    ]


class _LinkInfo(ctypes.Structure):
    """The head of struct bpf_link_info."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("rest", ctypes.c_uint64 * 4),
    ]


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach `prog_fd` to `target_fd` (a cgroup, ...) as a BPF link; its fd."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type)
    return bpf(BPF_LINK_CREATE, attr, f"create a link of attach type {attach_type}")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program of a link in place (no moment without one)."""
    bpf(BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=prog_fd), "update a link")


def link_prog_id(link_fd: int) -> int:
    """The id of the program a link runs."""
    info = _LinkInfo()
    attr = _InfoAttr(bpf_fd=link_fd, info_len=ctypes.sizeof(info), info=_addr(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "get link info")
    return info.prog_id


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs, the stride of per-CPU map values."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


def lookup(fd: int, key: ctypes.Array, value: ctypes.Array) -> bool:
    """Fill `value` for `key`; False when the key is absent."""
    attr = _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value))
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, attr, "map lookup")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def update(fd: int, key: ctypes.Array, value: ctypes.Array, flags: int = BPF_ANY) -> None:
    attr = _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags)
    bpf(BPF_MAP_UPDATE_ELEM, attr, "map update")


def delete(fd: int, key: ctypes.Array) -> bool:
    """Delete `key`; False when it was absent."""
    attr = _ElemAttr(map_fd=fd, key=_addr(key))
    try:
        bpf(BPF_MAP_DELETE_ELEM, attr, "map delete")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def next_key(fd: int, key: ctypes.Array | None, out: ctypes.Array) -> bool:
    """Write the key after `key` (or the first key) into `out`; False at the end."""
    attr = _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(out))
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, attr, "map get next key")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_batch(
    fd: int,
    in_batch: ctypes.Array | None,
    out_batch: ctypes.Array,
    keys: ctypes.Array,
    values: ctypes.Array,
    count: int,
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH step: (entries read, reached the end)."""
    attr = _BatchAttr(
        in_batch=_addr(in_batch),
        out_batch=_addr(out_batch),
        keys=_addr(keys),
        values=_addr(values),
        count=count,
        map_fd=fd,
    )
    try:
        bpf(BPF_MAP_LOOKUP_BATCH, attr, "map lookup batch")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return attr.count, True
        raise
    return attr.count, False


def update_batch(fd: int, keys: ctypes.Array, values: ctypes.Array, count: int) -> int:
    """Write `count` key/value pairs in one call; returns how many were written."""
    attr = _BatchAttr(keys=_addr(keys), values=_addr(values), count=count, map_fd=fd)
    bpf(BPF_MAP_UPDATE_BATCH, attr, "map update batch")
    return attr.count


def delete_batch(fd: int, keys: ctypes.Array, count: int) -> int:
    """Delete `count` keys in one call; returns how many were deleted."""
    attr = _BatchAttr(keys=_addr(keys), count=count, map_fd=fd)
    try:
        bpf(BPF_MAP_DELETE_BATCH, attr, "map delete batch")
    except BpfError as e:
        if e.errno != errno.ENOENT:
            raise
    return attr.count


def prog_test_run(
    prog_fd: int, data: bytes, ctx: bytes | None = None, repeat: int = 1
) -> tuple[int, bytes, int]:
    """Run a loaded program on `data`: (return value, output packet, ns per run)."""
    ret, out, duration, _ = prog_test_run_ctx(prog_fd, data, ctx, repeat)
    return ret, out, duration


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


class _XdpMd(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in ("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index",
                     "egress_ifindex")
    ]  # fmt: skip


def prog_test_run_live(prog_fd: int, data: bytes, ifindex: int, repeat: int) -> int:
    """Run an XDP program on `repeat` copies of `data` received on `ifindex`
    (of this thread's namespace) in live-frame mode: what it sends with
    XDP_TX or a redirect is really sent, as xdp-trafficgen does. Returns the
    ns the runs took."""
    data_in = ctypes.create_string_buffer(data, len(data))
    ctx = _XdpMd(data_end=len(data), ingress_ifindex=ifindex)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_in=_addr(data_in),
        repeat=repeat,
        ctx_size_in=ctypes.sizeof(ctx),
        ctx_in=_addr(ctx),
        flags=BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size=64,
    )
    bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN (live frames)")
    return attr.duration * repeat


def prog_test_run_ctx(
    prog_fd: int, data: bytes, ctx: bytes | None = None, repeat: int = 1
) -> tuple[int, bytes, int, bytes]:
    """prog_test_run, also giving the context as the program left it
    (for tc programs a struct __sk_buff: mark, priority, ...)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 512)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=len(out),
        data_in=_addr(data_in),
        data_out=_addr(out),
        repeat=repeat,
    )
    ctx_buf = ctx_out = None
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
        ctx_out = ctypes.create_string_buffer(len(ctx))
        attr.ctx_in = _addr(ctx_buf)
        attr.ctx_size_in = len(ctx)
        attr.ctx_out = _addr(ctx_out)
        attr.ctx_size_out = len(ctx)
    bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    ctx_after = ctx_out.raw[: attr.ctx_size_out] if ctx_out is not None else b""
    return attr.retval, out.raw[: attr.data_size_out], attr.duration, ctx_after
