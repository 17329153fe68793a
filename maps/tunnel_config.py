"""The `tunnel_config` array (one entry): overlay mode and devices (bpf/lib/tunnel.h)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, ip_to_be
from porin.maps.pinned import PinnedMap, U32Key

TUNNEL_MODES = {"disabled": 0, "vxlan": 1, "ipip": 2}
TUNNEL_MODE_NAMES = {v: k for k, v in TUNNEL_MODES.items()}


Index = U32Key  # the array index


class TunnelConfig(ctypes.Structure):
    _fields_ = [
        ("mode", ctypes.c_uint32),
        ("vxlan_ifindex", ctypes.c_uint32),
        ("uplink_ifindex", ctypes.c_uint32),
        ("node_ip", ctypes.c_uint32),
        ("mtu", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]

    @classmethod
    def of(
        cls, mode: str, vxlan_ifindex: int, uplink_ifindex: int, node_ip: str, mtu: int
    ) -> TunnelConfig:
        return cls(
            mode=TUNNEL_MODES[mode],
            vxlan_ifindex=vxlan_ifindex,
            uplink_ifindex=uplink_ifindex,
            node_ip=ip_to_be(node_ip) if node_ip else 0,
            mtu=mtu,
        )

    @property
    def mode_name(self) -> str:
        return TUNNEL_MODE_NAMES.get(self.mode, str(self.mode))

    @property
    def ip(self) -> str:
        return be_to_ip(self.node_ip)


class TunnelConfigMap(PinnedMap[Index, TunnelConfig]):
    NAME = "tunnel_config"
    TYPE = map_types.ARRAY
    SIZE = 1
    KEY = Index
    VALUE = TunnelConfig

    def set(self, cfg: TunnelConfig) -> None:
        self.put(Index(0), cfg)

    def current(self) -> TunnelConfig:
        return self.get(Index(0)) or TunnelConfig()
