"""The overlay device and its program.

VXLAN: a `porin_vxlan` device in collect-metadata mode (UDP 8472, no
learning, MTU of the underlay minus 50) with bpf_overlay.c's from_overlay on
its tc ingress. IPIP needs no device: bpf_lxc.c encapsulates and
bpf_host.c decapsulates on the uplink. Either way `tunnel_config` tells the
datapath the mode, the devices and the node's address.
"""

from __future__ import annotations

import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from porin.daemon import links
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import (
    TC_INGRESS,
    DatapathError,
    Program,
    ensure_clsact,
    replace_filter,
)
from porin.maps.tunnel_config import TunnelConfig, TunnelConfigMap

log = logging.getLogger("porin.tunnel")

VXLAN_DEVICE = "porin_vxlan"
VXLAN_PORT = 8472


class Tunnel:
    def __init__(
        self,
        cfg: AgentConfig,
        ipr: IPRoute,
        uplink_ifindex: int,
        node_ip: str,
        programs: dict[str, Program],
    ) -> None:
        self.cfg = cfg
        self.ipr = ipr
        self.mode = cfg.tunnel_mode
        self.node_ip = node_ip
        self.uplink_ifindex = uplink_ifindex
        self.vxlan_ifindex = 0
        self.programs = {"from_overlay": programs["from_overlay"]} if self.mode == "vxlan" else {}

    ENTRY = "bpf_overlay.c"

    def setup(self) -> None:
        if self.mode == "vxlan":
            self.vxlan_ifindex = self._vxlan_device()
            ensure_clsact(self.ipr, self.vxlan_ifindex)
            replace_filter(self.ipr, self.vxlan_ifindex, TC_INGRESS, self.programs["from_overlay"])
        else:
            links.delete_link(self.ipr, VXLAN_DEVICE)
        with TunnelConfigMap(self.cfg.bpffs_root) as m:
            m.set(
                TunnelConfig.of(
                    self.mode, self.vxlan_ifindex, self.uplink_ifindex, self.node_ip, self.cfg.mtu
                )
            )
        log.info("tunnel: %s (node %s, pod MTU %d)", self.mode, self.node_ip, self.cfg.pod_mtu)

    def _vxlan_device(self) -> int:
        idx = links.link_index(self.ipr, VXLAN_DEVICE)
        if idx is None:
            try:
                self.ipr.link(
                    "add",
                    ifname=VXLAN_DEVICE,
                    kind="vxlan",
                    vxlan_collect_metadata=1,
                    vxlan_port=VXLAN_PORT,
                    vxlan_learning=0,
                    mtu=self.cfg.mtu - 50,
                )
            except NetlinkError as e:
                raise DatapathError(f"cannot create {VXLAN_DEVICE}: {e}") from e
            idx = links.link_index(self.ipr, VXLAN_DEVICE)
            assert idx is not None
        self.ipr.link("set", index=idx, state="up")
        return idx


def remove_tunnel_device(ipr: IPRoute) -> None:
    links.delete_link(ipr, VXLAN_DEVICE)
