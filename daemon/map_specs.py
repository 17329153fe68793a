"""Every pinned map of the datapath: its kernel shape, and what happens to a
pin whose shape is not that.

This table is the single source of map sizes: `size_flags` hands them to
the C code as -D flags. Keys and values are the ctypes layouts of maps/;
tests/bpf/test_bpf_map_specs.py checks the table against the maps bcc really
creates, and every layout field by field (name, offset, size) against the
one clang derived from the C struct, as Cilium's alignchecker does.

bcc reuses a pinned map of the same name whatever its shape, which is what
keeps restarts hitless, but a pin left by an older build or by another
config (a different ctMapSize, a map that became an array) would then be
used with the wrong layout. `reconcile_pins` runs before each compile and
unpins such maps, so that bcc creates them afresh; their entries are lost,
and the agent writes back what it owns (endpoints, services, devices,
ipcache) as it starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field

from porin.daemon.config import AgentConfig
from porin.maps import syscall
from porin.maps.conntrack import CtEntry, CtKey
from porin.maps.endpoint_slots import SlotIndex
from porin.maps.endpoints import EndpointInfo, EndpointKey
from porin.maps.host_devices import HostDevice, Ifindex
from porin.maps.ipcache import IpcacheKey, RemoteEndpointInfo
from porin.maps.lb_affinity import AffinityKey, AffinityValue
from porin.maps.lb_backends import BackendSlot, Lb4Backend
from porin.maps.lb_reverse_nat import Lb4ReverseNat, RevNatId
from porin.maps.lb_services import Lb4Key, Lb4Service
from porin.maps.metrics import MetricsKey, MetricsValue
from porin.maps.monitor_config import Index as MonitorIndex
from porin.maps.monitor_config import MonitorConfig
from porin.maps.monitor_lost import Counter
from porin.maps.nat import NatEntry, NatKey
from porin.maps.nonmasq import LpmKey, Present
from porin.maps.tunnel_config import Index, TunnelConfig

log = logging.getLogger("porin.maps")

# enum bpf_map_type
HASH, ARRAY, PERCPU_ARRAY, LRU_HASH, LPM_TRIE, RINGBUF = 1, 2, 6, 9, 11, 27
TYPE_NAMES = {
    HASH: "hash",
    ARRAY: "array",
    PERCPU_ARRAY: "percpu_array",
    LRU_HASH: "lru_hash",
    LPM_TRIE: "lpm_trie",
    RINGBUF: "ringbuf",
}
BPF_F_NO_PREALLOC = 1

# sizes that are not in the agent's config
ENDPOINT_SLOT_BITS = 16
LB_SERVICES_MAP_SIZE = 131072
LB_BACKENDS_MAP_SIZE = 131072
LB_MAGLEV_MAP_SIZE = 1024
LB_AFFINITY_MAP_SIZE = 65536
IPCACHE_MAP_SIZE = 65536
METRICS_SLOTS = 256 * 4
HOST_DEVICES_MAP_SIZE = 256
NONMASQ_MAP_SIZE = 256
MONITOR_RING_SIZE = 1 << 20  # bytes: about 6,000 events


@dataclass(frozen=True)
class MapSpec:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    # the ctypes layouts (None: raw bytes, e.g. the Maglev table and the ring buffer)
    key_type: type | None = field(default=None, compare=False)
    value_type: type | None = field(default=None, compare=False)

    def describe(self) -> str:
        kind = TYPE_NAMES.get(self.map_type, str(self.map_type))
        return (
            f"{kind} key {self.key_size} value {self.value_size} "
            f"max {self.max_entries} flags {self.flags:#x}"
        )


def _spec(name: str, map_type: int, key: type, value: type, size: int, flags: int = 0) -> MapSpec:
    return MapSpec(
        name, map_type, ctypes.sizeof(key), ctypes.sizeof(value), size, flags, key, value
    )


def map_specs(cfg: AgentConfig) -> list[MapSpec]:
    """The shape of every map the datapath pins, under `cfg`."""
    return [
        _spec("endpoints", HASH, EndpointKey, EndpointInfo, cfg.endpoints_map_size),
        _spec("endpoint_slots", ARRAY, SlotIndex, EndpointInfo, 1 << ENDPOINT_SLOT_BITS),
        _spec("ct4_global", LRU_HASH, CtKey, CtEntry, cfg.ct_map_size),
        _spec("lb4_services", HASH, Lb4Key, Lb4Service, LB_SERVICES_MAP_SIZE),
        _spec("lb4_backends", ARRAY, BackendSlot, Lb4Backend, LB_BACKENDS_MAP_SIZE),
        _spec("lb4_reverse_nat", HASH, RevNatId, Lb4ReverseNat, LB_SERVICES_MAP_SIZE),
        MapSpec(
            "lb4_maglev", HASH, 2, 4 * cfg.maglev_table_size, LB_MAGLEV_MAP_SIZE, BPF_F_NO_PREALLOC
        ),
        _spec("lb4_affinity", LRU_HASH, AffinityKey, AffinityValue, LB_AFFINITY_MAP_SIZE),
        _spec("metrics", PERCPU_ARRAY, MetricsKey, MetricsValue, METRICS_SLOTS),
        _spec("nat4", HASH, NatKey, NatEntry, cfg.nat_map_size),
        _spec("host_devices", HASH, Ifindex, HostDevice, HOST_DEVICES_MAP_SIZE),
        _spec("nonmasq_cidrs", LPM_TRIE, LpmKey, Present, NONMASQ_MAP_SIZE, BPF_F_NO_PREALLOC),
        _spec(
            "ipcache", LPM_TRIE, IpcacheKey, RemoteEndpointInfo, IPCACHE_MAP_SIZE, BPF_F_NO_PREALLOC
        ),
        _spec("tunnel_config", ARRAY, Index, TunnelConfig, 1),
        _spec("monitor_config", ARRAY, MonitorIndex, MonitorConfig, 1),
        _spec("monitor_lost", PERCPU_ARRAY, MonitorIndex, Counter, 1),
        MapSpec("monitor_events", RINGBUF, 0, 0, MONITOR_RING_SIZE),
    ]


def size_flags(cfg: AgentConfig) -> list[str]:
    """The -D flags that size the maps in the C code."""
    sizes = {
        "ENDPOINTS_MAP_SIZE": cfg.endpoints_map_size,
        "ENDPOINT_SLOT_BITS": ENDPOINT_SLOT_BITS,
        "CT_MAP_SIZE": cfg.ct_map_size,
        "LB_SERVICES_MAP_SIZE": LB_SERVICES_MAP_SIZE,
        "LB_BACKENDS_MAP_SIZE": LB_BACKENDS_MAP_SIZE,
        "LB_MAGLEV_MAP_SIZE": LB_MAGLEV_MAP_SIZE,
        "LB_MAGLEV_TABLE_SIZE": cfg.maglev_table_size,
        "LB_AFFINITY_MAP_SIZE": LB_AFFINITY_MAP_SIZE,
        "IPCACHE_MAP_SIZE": IPCACHE_MAP_SIZE,
        "NAT_MAP_SIZE": cfg.nat_map_size,
        "MONITOR_RING_SIZE": MONITOR_RING_SIZE,
        "METRICS_SLOTS": METRICS_SLOTS,
        "HOST_DEVICES_MAP_SIZE": HOST_DEVICES_MAP_SIZE,
        "NONMASQ_MAP_SIZE": NONMASQ_MAP_SIZE,
    }
    return [f"-D{k}={v}" for k, v in sizes.items()]


def pinned_shape(path: str) -> MapSpec | None:
    """The shape of the map pinned at `path`, or None when nothing is."""
    try:
        fd = syscall.obj_get(path, read_only=True)
    except syscall.BpfError as e:
        if e.errno == 2:
            return None
        raise
    try:
        i = syscall.map_info(fd)
    finally:
        os.close(fd)
    name = os.path.basename(path)
    return MapSpec(name, i.type, i.key_size, i.value_size, i.max_entries, i.map_flags)


def reconcile_pins(cfg: AgentConfig) -> list[str]:
    """Unpin every map whose shape differs from what this build and `cfg`
    create, so the next compile makes it afresh. Returns their names."""
    removed = []
    for spec in map_specs(cfg):
        path = os.path.join(cfg.bpffs_root, spec.name)
        have = pinned_shape(path)
        if have is None or have == spec:
            continue
        log.warning(
            "BPF map %s is pinned as %s; this build and config want %s: "
            "recreating it (its entries are lost)",
            path,
            have.describe(),
            spec.describe(),
        )
        os.unlink(path)
        removed.append(spec.name)
    return removed
