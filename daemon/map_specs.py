"""Every pinned map of the datapath: its kernel shape, and what happens to a
pin whose shape is not that.

Each map module declares its map once (type, flags, size, the -D flag that
sizes it in C, key and value: maps/pinned.py); this module collects them
into the table of shapes and the -D flags (`size_flags`). Keys and values
are the ctypes layouts of maps/;
tests/bpf/test_bpf_map_specs.py checks the table against the maps bcc really
creates, and every layout field by field (name, offset, size) against the
one clang derived from the C struct, as Cilium's alignchecker does.

bcc reuses a pinned map of the same name whatever its shape, which is what
keeps restarts hitless, but a pin left by an older build or by another
config (a different ctMapSize, a map that became an array) would then be
used with the wrong layout. `reconcile_pins` runs before each compile and
unpins such maps, so that bcc creates them afresh; their entries are lost,
and the agent writes back what it owns (endpoints, services, devices,
ipcache) as it starts; the state it cannot write back (conntrack, NAT,
affinity) is carried over into the new map by daemon/map_migrate.py, in
the new layout when the old one is among those its module declares
(`PinnedMap.PREVIOUS_LAYOUTS`).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field

from porin.daemon import map_migrate
from porin.daemon.config import AgentConfig
from porin.maps import map_types, syscall
from porin.maps.conntrack import ConntrackMap
from porin.maps.conntrack_confirmed import ConntrackConfirmedMap
from porin.maps.ct4_stats import CtStatsMap
from porin.maps.dsr4 import Dsr4Map
from porin.maps.endpoint_slots import ENDPOINT_SLOT_BITS, EndpointSlotsMap
from porin.maps.endpoints import EndpointsMap
from porin.maps.flow_config import FlowConfigMap
from porin.maps.flow_events import FlowRing
from porin.maps.flow_lost import FlowLostMap
from porin.maps.flow_rate import FlowRateMap
from porin.maps.frag4 import Frag4Map
from porin.maps.host_devices import HostDeviceSlotsMap, HostDevicesMap
from porin.maps.ipcache import IpcacheMap
from porin.maps.lb4_flows import Lb4FlowsMap
from porin.maps.lb_affinity import AffinityMap
from porin.maps.lb_backends import BackendsMap
from porin.maps.lb_maglev import MaglevMap
from porin.maps.lb_reverse_nat import ReverseNatMap
from porin.maps.lb_services import ServicesMap
from porin.maps.metrics import MetricsMap
from porin.maps.monitor_config import MonitorConfigMap
from porin.maps.monitor_events import RingBuffer
from porin.maps.monitor_lost import MonitorLostMap
from porin.maps.nat import NatMap
from porin.maps.nonmasq import NonMasqMap
from porin.maps.pinned import PinnedMap
from porin.maps.policy import PolicyMap
from porin.maps.policy_cidr import PolicyCidrMap
from porin.maps.policy_scratch import PolicyScratchMap
from porin.maps.prefilter_counts import PrefilterCountsMap
from porin.maps.prefilter_exact import PrefilterExactMap
from porin.maps.prefilter_l24 import PrefilterL24Map
from porin.maps.prefilter_lpm import PrefilterLpmMap
from porin.maps.prefilter_slots import PrefilterL16Map, PrefilterSlotsMap, slot_bits
from porin.maps.sock_config import SockConfigMap
from porin.maps.sock_rev4 import SockRev4Map
from porin.maps.tunnel_config import TunnelConfigMap
from porin.maps.xdp_metrics import XdpMetricsMap
from porin.maps.xdp_routes4 import XdpRoutesMap

log = logging.getLogger("porin.maps")

TYPE_NAMES = map_types.NAMES

# every map the datapath pins, each declared once in its module
PINNED_MAPS: list[type[PinnedMap]] = [
    EndpointsMap,
    EndpointSlotsMap,
    ConntrackMap,
    ConntrackConfirmedMap,
    CtStatsMap,
    ServicesMap,
    BackendsMap,
    ReverseNatMap,
    AffinityMap,
    MetricsMap,
    NatMap,
    HostDevicesMap,
    HostDeviceSlotsMap,
    NonMasqMap,
    IpcacheMap,
    PolicyMap,
    PolicyCidrMap,
    PolicyScratchMap,
    PrefilterExactMap,
    PrefilterLpmMap,
    PrefilterSlotsMap,
    PrefilterL16Map,
    PrefilterL24Map,
    PrefilterCountsMap,
    XdpMetricsMap,
    Lb4FlowsMap,
    XdpRoutesMap,
    Frag4Map,
    Dsr4Map,
    SockConfigMap,
    SockRev4Map,
    TunnelConfigMap,
    MonitorConfigMap,
    MonitorLostMap,
    FlowConfigMap,
    FlowRateMap,
    FlowLostMap,
]

PINNED_BY_NAME: dict[str, type[PinnedMap]] = {m.NAME: m for m in PINNED_MAPS}


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


def map_specs(cfg: AgentConfig) -> list[MapSpec]:
    """The shape of every map the datapath pins, under `cfg`."""
    specs = [
        MapSpec(
            m.NAME,
            m.TYPE,
            ctypes.sizeof(m.KEY),
            ctypes.sizeof(m.VALUE),
            m.max_entries_for(cfg),
            m.FLAGS,
            m.KEY,
            m.VALUE,
        )
        for m in PINNED_MAPS
    ]
    specs.append(  # a raw table of backend ids: its size is a build flag too
        MapSpec(
            MaglevMap.NAME,
            MaglevMap.TYPE,
            2,
            4 * cfg.maglev_table_size,
            MaglevMap.SIZE,
            MaglevMap.FLAGS,
        )
    )
    for ring in (RingBuffer, FlowRing):
        specs.append(MapSpec(ring.NAME, ring.TYPE, 0, 0, ring.SIZE))
    return specs


def size_flags(cfg: AgentConfig) -> list[str]:
    """The -D flags that size the maps in the C code."""
    sizes = {m.SIZE_FLAG: m.max_entries_for(cfg) for m in PINNED_MAPS if m.SIZE_FLAG}
    sizes |= {
        "ENDPOINT_SLOT_BITS": ENDPOINT_SLOT_BITS,
        "PREFILTER_SLOT_BITS": slot_bits(cfg.prefilter_slots),
        MaglevMap.SIZE_FLAG: MaglevMap.SIZE,
        "LB_MAGLEV_TABLE_SIZE": cfg.maglev_table_size,
        RingBuffer.SIZE_FLAG: RingBuffer.SIZE,
        FlowRing.SIZE_FLAG: FlowRing.SIZE,
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


# Maps of earlier builds that this one no longer has, and what took their
# place: unpinned at start, so that no map of an older build is left behind.
RETIRED_PINS = {
    "xdp_actions": (
        "bpf_xdp.c now counts each verdict by reason and action in xdp_metrics; "
        "the per-action counts restart at 0"
    ),
}


def reconcile_pins(cfg: AgentConfig, migrate: bool = False) -> list[str]:
    """Unpin every map whose shape differs from what this build and `cfg`
    create, so the next compile makes it afresh, and every retired one.
    Returns their names. With `migrate` (the live maps), a hash or LRU map of
    this layout or of one its module declares as previous is parked so that
    daemon/map_migrate.py carries its entries over."""
    removed = []
    for name, why in RETIRED_PINS.items():
        path = os.path.join(cfg.bpffs_root, name)
        if os.path.exists(path):
            log.warning("BPF map %s is no longer used (%s): removing it", path, why)
            os.unlink(path)
            removed.append(name)
    for spec in map_specs(cfg):
        path = os.path.join(cfg.bpffs_root, spec.name)
        have = pinned_shape(path)
        if have is None or have == spec:
            continue
        module = PINNED_BY_NAME.get(spec.name)
        carried = migrate and map_migrate.can_carry(
            (have.map_type, have.key_size, have.value_size),
            (spec.map_type, spec.key_size, spec.value_size),
            module,
        )
        if carried:
            fate = ", its entries are carried over"
        elif module is not None and module.REBUILT_FROM:
            fate = f"; the agent refills it from {module.REBUILT_FROM}"
        else:
            fate = " (its entries are lost)"
        log.warning(
            "BPF map %s is pinned as %s; this build and config want %s: recreating it%s",
            path,
            have.describe(),
            spec.describe(),
            fate,
        )
        if carried:
            map_migrate.park(cfg.bpffs_root, spec.name)
        else:
            os.unlink(path)
        removed.append(spec.name)
    return removed
