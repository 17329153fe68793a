"""Every constant the Python side mirrors from a bpf/lib header has the
header's value: the header is the source, this test is what keeps the
copies honest (reasons.h needs none: maps/metrics.py parses it)."""

from __future__ import annotations

import re

import pytest

from porin.bpf import SOURCE_DIR
from porin.daemon import tunnel
from porin.maps import (
    conntrack,
    endpoints,
    flow_events,
    flow_lost,
    host_devices,
    ipcache,
    lb_backends,
    lb_services,
    monitor_config,
    monitor_events,
    nat,
    tunnel_config,
)

DEFINE = re.compile(r"^\s*#define\s+([A-Z][A-Z0-9_]*)\s+(\(?-?(?:0x[0-9a-fA-F]+|\d+)\)?)\b", re.M)


def header_constants() -> dict[str, int]:
    out = {}
    for path in sorted((SOURCE_DIR / "lib").glob("*.h")):
        for name, value in DEFINE.findall(path.read_text()):
            out[name] = int(value.strip("()"), 0)
    return out


MIRRORED = {
    "CT_F_HAIRPIN": conntrack.CT_F_HAIRPIN,
    "CT_F_TX_FIN": conntrack.CT_F_TX_FIN,
    "CT_F_RX_FIN": conntrack.CT_F_RX_FIN,
    "CT_F_RELATED": conntrack.CT_F_RELATED,
    "CT_F_MULTI_CPU": conntrack.CT_F_MULTI_CPU,
    "CT_F_DSR": conntrack.CT_F_DSR,
    "CT_DIR_OUT": next(k for k, v in conntrack.DIRS.items() if v == "OUT"),
    "CT_DIR_IN": next(k for k, v in conntrack.DIRS.items() if v == "IN"),
    "ENDPOINT_F_SLOT_SHARED": endpoints.ENDPOINT_F_SLOT_SHARED,
    "HOST_DEV_MASQUERADE": host_devices.HOST_DEV_MASQUERADE,
    "IPCACHE_F_NODE": ipcache.IPCACHE_F_NODE,
    "IDENTITY_UNKNOWN": ipcache.IDENTITY_UNKNOWN,
    "IDENTITY_HOST": ipcache.IDENTITY_HOST,
    "IDENTITY_WORLD": ipcache.IDENTITY_WORLD,
    "IDENTITY_REMOTE_NODE": ipcache.IDENTITY_REMOTE_NODE,
    "IDENTITY_FIRST_ALLOCATED": ipcache.IDENTITY_FIRST_ALLOCATED,
    "SVC_F_MAGLEV": lb_services.SVC_F_MAGLEV,
    "SVC_F_AFFINITY": lb_services.SVC_F_AFFINITY,
    "SVC_F_XDP": lb_services.SVC_F_XDP,
    "BACKEND_ACTIVE": lb_backends.BACKEND_STATES["active"],
    "BACKEND_TERMINATING": lb_backends.BACKEND_STATES["terminating"],
    "BACKEND_MAINTENANCE": lb_backends.BACKEND_STATES["maintenance"],
    "MONITOR_F_DROPS": monitor_config.MONITOR_F_DROPS,
    "MONITOR_F_TRACE": monitor_config.MONITOR_F_TRACE,
    "CAPTURE_BYTES": monitor_events.MONITOR_CAPTURE,
    "FLOW_NEW": flow_events.FLOW_NEW,
    "FLOW_REPLY": flow_events.FLOW_REPLY,
    "FLOW_DROP": flow_events.FLOW_DROP,
    "FLOW_LOST_RING_FULL": flow_lost.RING_FULL,
    "FLOW_LOST_RATE": flow_lost.RATE_LIMITED,
    "NAT_DIR_OUT": nat.NAT_DIR_OUT,
    "NAT_DIR_IN": nat.NAT_DIR_IN,
    "TUNNEL_NONE": tunnel_config.TUNNEL_MODES["disabled"],
    "TUNNEL_VXLAN": tunnel_config.TUNNEL_MODES["vxlan"],
    "TUNNEL_IPIP": tunnel_config.TUNNEL_MODES["ipip"],
    "VXLAN_PORT": tunnel.VXLAN_PORT,
}
MIRRORED |= {
    f"CT_STATE_{name.upper()}": code
    for code, name in conntrack.STATES.items()
    if f"CT_STATE_{name.upper()}" in header_constants()
}
MIRRORED |= {
    f"CT_{name.upper()}": code
    for code, name in monitor_events.CT_STATUS_NAMES.items()
    if name and f"CT_{name.upper()}" in header_constants()
}


@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_python_constant_has_the_headers_value(name):
    consts = header_constants()
    assert name in consts, f"{name} is no longer defined in bpf/lib/*.h"
    assert MIRRORED[name] == consts[name]


def test_every_conntrack_state_is_mirrored():
    states = {n for n in header_constants() if n.startswith("CT_STATE_")}
    assert states == {n for n in MIRRORED if n.startswith("CT_STATE_")}
