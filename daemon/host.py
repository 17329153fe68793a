"""The host datapath: bpf_host.c on the node's uplinks and loopback.

from_netdev / to_netdev go on tc ingress / egress of every device named in
the config (masquerade, NodePort, replies back to pods); from_host_lo on
tc ingress of lo (the node's own connections to its NodePorts). Node IPs
and the non-masquerade CIDRs are written to maps, not compiled in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyroute2 import IPRoute

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
from porin.maps.host_devices import HostDevice, sync_host_devices
from porin.maps.nonmasq import NonMasqMap

log = logging.getLogger("porin.host")


@dataclass(frozen=True)
class Uplink:
    name: str
    ifindex: int
    node_ip: str


class HostDatapath:
    ENTRY = "bpf_host.c"

    PROGRAMS = ["from_netdev", "to_netdev", "from_host_lo"]

    def __init__(self, cfg: AgentConfig, ipr: IPRoute, programs: dict[str, Program]) -> None:
        self.cfg = cfg
        self.ipr = ipr
        self.uplinks: list[Uplink] = []
        self.programs = {name: programs[name] for name in self.PROGRAMS}

    def attach(self) -> None:
        """Attach to every configured device and lo; program node IPs and CIDRs."""
        uplinks = [self._uplink(name) for name in self.cfg.devices]
        with NonMasqMap(self.cfg.bpffs_root) as nm:
            nm.sync(self.cfg.non_masquerade_cidrs)
        sync_host_devices(
            self.cfg.bpffs_root,
            {up.ifindex: HostDevice.of(up.node_ip, self.cfg.enable_masquerade) for up in uplinks},
        )
        for up in uplinks:
            ensure_clsact(self.ipr, up.ifindex)
            replace_filter(self.ipr, up.ifindex, TC_INGRESS, self.programs["from_netdev"])
            replace_filter(self.ipr, up.ifindex, TC_EGRESS, self.programs["to_netdev"])
            log.info(
                "attached bpf_host to %s (ifindex %d, node IP %s)", up.name, up.ifindex, up.node_ip
            )
        lo = links.link_index(self.ipr, "lo")
        if lo is not None and uplinks:
            ensure_clsact(self.ipr, lo)
            replace_filter(self.ipr, lo, TC_INGRESS, self.programs["from_host_lo"])
        self.uplinks = uplinks

    def _uplink(self, name: str) -> Uplink:
        idx = links.link_index(self.ipr, name)
        if idx is None:
            raise DatapathError(f"device {name} (from 'devices') does not exist")
        ip = self.cfg.node_ips.get(name)
        if ip is None:
            addrs = [a.get_attr("IFA_ADDRESS") for a in self.ipr.get_addr(index=idx, family=2)]
            if not addrs:
                raise DatapathError(
                    f"device {name} has no IPv4 address; set nodeIPs.{name} in the config"
                )
            ip = addrs[0]
        return Uplink(name=name, ifindex=idx, node_ip=ip)

    @property
    def node_ips(self) -> list[str]:
        return sorted({u.node_ip for u in self.uplinks})
