"""Entries carried over when a pinned map is recreated (a changed size or
type, across a config change or an upgrade).

`reconcile_pins` (daemon/map_specs.py) drops a pin whose shape this build
and config do not create, but a hash or LRU map of the same key and value
sizes holds state the agent cannot write back (conntrack and its copies,
NAT, affinity, the XDP flow tables): such a pin is moved to
<bpffsRoot>/migrating/<name> instead. The compile creates the new map, and
the agent copies the old entries in twice: before its programs are attached
(the bulk), and once every old program is replaced (what they wrote
meanwhile; an entry the new programs wrote since is kept). Then the old pin
goes. The old programs use their map until they are replaced, so no packet
meets an empty table. A map smaller than its entries takes the first that
fit (the rest are counted in the log).
"""

from __future__ import annotations

import ctypes
import logging
import os

from porin.maps import map_types, syscall

log = logging.getLogger("porin.maps")

MIGRATING_DIR = "migrating"
CARRIED_TYPES = {map_types.HASH, map_types.LRU_HASH}


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


def _copy(old_path: str, new_path: str) -> tuple[int, int]:
    """The old map's entries that the new one lacks: (copied, did not fit)."""
    old = syscall.obj_get(old_path, read_only=True)
    try:
        new = syscall.obj_get(new_path)
    except BaseException:
        os.close(old)
        raise
    try:
        info = syscall.map_info(new)
        copied = lost = 0
        for k, v in _entries(old, info.key_size, info.value_size):
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


def carry_over(bpffs_root: str, final: bool) -> dict[str, int]:
    """Copy every parked map's entries into the map of its name; `final` (every
    old program replaced) removes the parked pins afterwards."""
    d = parked_dir(bpffs_root)
    if not os.path.isdir(d):
        return {}
    copied: dict[str, int] = {}
    for name in sorted(os.listdir(d)):
        try:
            n, lost = _copy(os.path.join(d, name), os.path.join(bpffs_root, name))
            copied[name] = n
            log.info(
                "BPF map %s: %d entries carried over from its previous shape%s%s",
                name,
                n,
                f", {lost} did not fit" if lost else "",
                "" if final else " (the rest once the old programs are replaced)",
            )
        except OSError as e:
            log.warning("BPF map %s: its entries could not be carried over: %s", name, e)
        if final:
            os.unlink(os.path.join(d, name))
    if final:
        os.rmdir(d)
    return copied
