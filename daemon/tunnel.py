"""The overlay device and its programs, and the node's own way into the overlay.

VXLAN: a `porin_vxlan` device in collect-metadata mode (UDP 8472, no
learning, MTU of the underlay minus 50) with bpf_overlay.c's from_overlay on
its tc ingress. IPIP needs no device: bpf_lxc.c encapsulates and
bpf_host.c decapsulates on the uplink. Either way `tunnel_config` tells the
datapath the mode, the devices and the node's address.

The node itself reaches other nodes' pods as Cilium's does through
cilium_host: each remote pod CIDR is routed to porin_host (NOARP, so no
neighbour is asked for), sourced from this node's pod gateway address and
limited to the pods' MTU; host_to_overlay on porin_host's egress puts the
packets into the overlay as the remote-node identity. Replies come back
through the overlay to the gateway address, which the datapath hands to the
stack. The routes carry protocol RTPROT_PORIN, so a restarted agent finds
and reconciles its own.
"""

from __future__ import annotations

import logging
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from porin.daemon import links
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import (
    TC_EGRESS,
    TC_INGRESS,
    DatapathError,
    Program,
    ensure_clsact,
    replace_filter,
)
from porin.maps.tunnel_config import TunnelConfig, TunnelConfigMap

log = logging.getLogger("porin.tunnel")

IFF_NOARP = 0x80
RTPROT_PORIN = 211  # the protocol of the agent's routes (rtnetlink: 0-255, unassigned)

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
        self.host_ifindex = 0
        names = ["from_overlay", "host_to_overlay"] if self.mode == "vxlan" else ["host_to_overlay"]
        self.programs = {n: programs[n] for n in names} if self.mode != "disabled" else {}
        self._routes: set[str] | None = None  # remote pod CIDRs routed to porin_host
        self._routes_lock = threading.Lock()

    ENTRY = "bpf_overlay.c"

    def setup(self) -> None:
        if self.mode == "vxlan":
            self.vxlan_ifindex = self._vxlan_device()
            ensure_clsact(self.ipr, self.vxlan_ifindex)
            replace_filter(self.ipr, self.vxlan_ifindex, TC_INGRESS, self.programs["from_overlay"])
            links.loosen_rp_filter(VXLAN_DEVICE)  # replies to the gateway arrive here
        else:
            links.delete_link(self.ipr, VXLAN_DEVICE)
        if self.mode != "disabled":
            self._host_device()
        with TunnelConfigMap(self.cfg.bpffs_root) as m:
            m.set(
                TunnelConfig.of(
                    self.mode, self.vxlan_ifindex, self.uplink_ifindex, self.node_ip, self.cfg.mtu
                )
            )
        log.info("tunnel: %s (node %s, pod MTU %d)", self.mode, self.node_ip, self.cfg.pod_mtu)

    def _host_device(self) -> None:
        """porin_host: NOARP, host_to_overlay on its egress."""
        idx = links.link_index(self.ipr, links.HOST_DEVICE)
        if idx is None:
            raise DatapathError(f"{links.HOST_DEVICE} is missing: the agent creates it first")
        self.host_ifindex = idx
        self.ipr.link("set", index=idx, flags=IFF_NOARP, change=IFF_NOARP)
        ensure_clsact(self.ipr, idx)
        replace_filter(self.ipr, idx, TC_EGRESS, self.programs["host_to_overlay"])
        if self.mode == "ipip" and self.uplink_ifindex:
            # decapsulated replies to the gateway reach the stack on the uplink
            name = self.ipr.get_links(self.uplink_ifindex)[0].get_attr("IFLA_IFNAME")
            links.loosen_rp_filter(name)

    def sync_routes(self, pod_cidrs: set[str]) -> None:
        """Route exactly these remote pod CIDRs into the overlay (idempotent, cheap
        when nothing changed: the kernel is read once, then only on change)."""
        if self.mode == "disabled":
            return
        with self._routes_lock:
            if self._routes is None:
                self._routes = {
                    f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
                    for r in self.ipr.get_routes(family=socket.AF_INET, proto=RTPROT_PORIN)
                }
            if pod_cidrs == self._routes:
                return
            for cidr in sorted(pod_cidrs - self._routes):
                net, plen = cidr.split("/")
                self.ipr.route(
                    "replace",
                    dst=net,
                    dst_len=int(plen),
                    oif=self.host_ifindex,
                    prefsrc=self.cfg.gateway,
                    proto=RTPROT_PORIN,
                    metrics={"mtu": self.cfg.pod_mtu},
                )
                log.info("route %s into the overlay (via %s)", cidr, links.HOST_DEVICE)
            for cidr in sorted(self._routes - pod_cidrs):
                net, plen = cidr.split("/")
                try:
                    self.ipr.route("del", dst=net, dst_len=int(plen), proto=RTPROT_PORIN)
                except NetlinkError:
                    pass
                log.info("route %s removed (its node left)", cidr)
            self._routes = set(pod_cidrs)

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
