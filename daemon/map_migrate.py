"""Entries carried over when a pinned map is recreated (a changed size,
type or layout, across a config change or an upgrade).

`reconcile_pins` (daemon/map_specs.py) drops a pin whose shape this build
and config do not create, but a hash or LRU map holds state the agent cannot
write back (conntrack and its copies, NAT, affinity, the XDP flow tables):
when its key and value sizes are this build's, or those of a layout the
map's module declares as a previous one (`PinnedMap.PREVIOUS_LAYOUTS`), the
pin is moved to <bpffsRoot>/migrating/<name> instead. The compile creates
the new map, and the agent copies the old entries in twice: before its
programs are attached (the bulk), and once every old program is replaced
(what they wrote meanwhile; an entry the new programs wrote since is kept).
An entry of a previous layout is rewritten in the new one by
`PinnedMap.upgrade` (field by name: maps/layouts.py). Then the old pin goes.
The old programs use their map until they are replaced, so no packet meets
an empty table. A map smaller than its entries takes the first that fit
(the rest are counted in the log).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Mapping

from porin.maps import layouts, map_types, syscall
from porin.maps.pinned import PinnedMap

log = logging.getLogger("porin.maps")

MIGRATING_DIR = "migrating"
CARRIED_TYPES = {map_types.HASH, map_types.LRU_HASH}


Shape = tuple[int, int, int]  # map type, key size, value size
Convert = Callable[[bytes, bytes], tuple[bytes, bytes] | None]


def can_carry(have: Shape, want: Shape, cls: type[PinnedMap] | None) -> bool:
    """Whether entries of a map pinned as `have` can be carried into one
    created as `want` (of the map module `cls`, when it has one)."""
    if {have[0], want[0]} - CARRIED_TYPES:
        return False
    if have[1:] == want[1:]:
        return True
    return cls is not None and cls.previous_layout(*have[1:]) is not None


def _converter(old: syscall.MapInfo, new: syscall.MapInfo, cls: type[PinnedMap] | None) -> Convert:
    """How an entry of the old map becomes one of the new (raw bytes)."""
    if (old.key_size, old.value_size) == (new.key_size, new.value_size):
        return lambda k, v: (k, v)
    layout = cls.previous_layout(old.key_size, old.value_size) if cls else None
    if layout is None:
        raise OSError(
            f"its key/value sizes {old.key_size}/{old.value_size} are no layout "
            "its module declares (PREVIOUS_LAYOUTS)"
        )
    okey, ovalue = layout

    def convert(k: bytes, v: bytes) -> tuple[bytes, bytes] | None:
        out = cls.upgrade(okey.from_buffer_copy(k), ovalue.from_buffer_copy(v))
        return None if out is None else (bytes(out[0]), bytes(out[1]))

    return convert


def parked_dir(bpffs_root: str) -> str:
    return os.path.join(bpffs_root, MIGRATING_DIR)


def park(bpffs_root: str, name: str) -> None:
    """Move the pin `name` aside for `carry_over`."""
    d = parked_dir(bpffs_root)
    os.makedirs(d, exist_ok=True)
    target = os.path.join(d, name)
    if os.path.exists(target):  # an earlier start did not finish: this one is newer
        os.unlink(target)
    os.rename(os.path.join(bpffs_root, name), target)


def _entries(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every entry of the map behind `fd`, key by key (a one-off at start)."""
    out = []
    cur: ctypes.Array | None = None
    key = ctypes.create_string_buffer(key_size)
    val = ctypes.create_string_buffer(value_size)
    while syscall.next_key(fd, cur, key):
        if syscall.lookup(fd, key, val):
            out.append((key.raw, val.raw))
        cur = ctypes.create_string_buffer(key.raw, key_size)
    return out


def _copy(old_path: str, new_path: str, cls: type[PinnedMap] | None) -> tuple[int, int]:
    """The old map's entries that the new one lacks: (copied, left behind:
    did not fit, or had no place in the new layout)."""
    old = syscall.obj_get(old_path, read_only=True)
    try:
        new = syscall.obj_get(new_path)
    except BaseException:
        os.close(old)
        raise
    try:
        info = syscall.map_info(old)
        convert = _converter(info, syscall.map_info(new), cls)
        copied = lost = 0
        for k, v in _entries(old, info.key_size, info.value_size):
            entry = convert(k, v)
            if entry is None:
                lost += 1
                continue
            k, v = entry
            try:
                syscall.update(
                    new,
                    ctypes.create_string_buffer(k, len(k)),
                    ctypes.create_string_buffer(v, len(v)),
                    syscall.BPF_NOEXIST,
                )
                copied += 1
            except syscall.BpfError as e:
                if e.errno == 17:  # EEXIST: the new programs' entry wins
                    continue
                lost += 1
        return copied, lost
    finally:
        os.close(old)
        os.close(new)


def carry_over(
    bpffs_root: str, final: bool, maps: Mapping[str, type[PinnedMap]] | None = None
) -> dict[str, int]:
    """Copy every parked map's entries into the map of its name (of the map
    module `maps[name]`); `final` (every old program replaced) removes the
    parked pins afterwards."""
    maps = maps or {}
    d = parked_dir(bpffs_root)
    if not os.path.isdir(d):
        return {}
    copied: dict[str, int] = {}
    for name in sorted(os.listdir(d)):
        try:
            n, lost = _copy(os.path.join(d, name), os.path.join(bpffs_root, name), maps.get(name))
            copied[name] = n
            log.info(
                "BPF map %s: %d entries carried over from its previous shape%s%s",
                name,
                n,
                f", {lost} left behind (no room, or no place in the new layout)" if lost else "",
                "" if final else " (the rest once the old programs are replaced)",
            )
        except (OSError, layouts.LayoutChangeError) as e:
            log.warning("BPF map %s: its entries could not be carried over: %s", name, e)
        if final:
            os.unlink(os.path.join(d, name))
    if final:
        os.rmdir(d)
    return copied
