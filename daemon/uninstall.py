"""Remove everything a stopped agent put on the node.

Endpoint veths (and with them the pods' interfaces and host routes), the
porin_host device and the pod-CIDR route, the pinned maps, the state dir and
the API socket. Programs go with the devices they are attached to.
"""

from __future__ import annotations

import logging
import os
import shutil

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from porin.daemon import links
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import FILTER_HANDLE, FILTER_PRIO, TC_EGRESS, TC_INGRESS, filter_names
from porin.daemon.store import EndpointStore

log = logging.getLogger("porin.uninstall")


HOST_PROGRAMS = {"from_netdev", "to_netdev", "from_host_lo"}


def detach_host_programs(ipr: IPRoute, name: str) -> None:
    """Remove Porin's filters from a device it does not own (uplinks, lo), and only those."""
    idx = links.link_index(ipr, name)
    if idx is None:
        return
    for parent in (TC_INGRESS, TC_EGRESS):
        if HOST_PROGRAMS & set(filter_names(ipr, idx, parent)):
            try:
                ipr.tc(
                    "del-filter",
                    "bpf",
                    index=idx,
                    handle=FILTER_HANDLE,
                    prio=FILTER_PRIO,
                    parent=parent,
                )
                log.info("detached Porin's program from %s", name)
            except NetlinkError as e:
                log.warning("cannot detach Porin's program from %s: %s", name, e)


def detach_xdp(ipr: IPRoute, name: str) -> None:
    """Remove the XDP program of a device when it is Porin's, and only then."""
    from porin.daemon.xdp import (
        PROGRAM_NAME,
        XDP_FLAGS_DRV_MODE,
        XDP_FLAGS_SKB_MODE,
        attached,
        set_xdp,
    )
    from porin.maps.syscall import prog_name_by_id

    idx = links.link_index(ipr, name)
    if idx is None:
        return
    mode, prog_id = attached(ipr, idx)
    if not prog_id or prog_name_by_id(prog_id) != PROGRAM_NAME:
        return
    try:
        set_xdp(ipr, idx, -1, XDP_FLAGS_DRV_MODE if mode == "native" else XDP_FLAGS_SKB_MODE)
        log.info("detached Porin's XDP program from %s", name)
    except NetlinkError as e:
        log.warning("cannot detach Porin's XDP program from %s: %s", name, e)


def uninstall(cfg: AgentConfig) -> None:
    from porin.daemon.agent import refuse_if_running

    refuse_if_running(cfg.api_socket)
    if cfg.kvstore:
        from porin.daemon.cluster import deregister
        from porin.daemon.kvstore import EtcdStore, KvStoreError

        try:
            n = deregister(EtcdStore(list(cfg.kvstore.get("endpoints", []))), cfg.node_name)
            log.info("node %s left the cluster (%d kvstore keys removed)", cfg.node_name, n)
        except KvStoreError as e:
            log.warning("kvstore unreachable, the node's lease will expire instead: %s", e)
    with IPRoute() as ipr:
        if os.path.isdir(cfg.state_dir):
            for data in EndpointStore(cfg.state_dir).load_all():
                name = data.get("host_ifname")
                if (
                    isinstance(name, str)
                    and name.startswith("lxc")
                    and links.delete_link(ipr, name)
                ):
                    log.info("removed %s (endpoint %s)", name, data.get("id"))
        links.remove_host_device(ipr, cfg.pod_cidr)
        links.delete_link(ipr, "porin_vxlan")
        for name in [*cfg.devices, "lo"]:
            detach_host_programs(ipr, name)
        for name in cfg.devices:
            detach_xdp(ipr, name)
    for path in (cfg.bpffs_root, cfg.state_dir, cfg.pending_delete_dir):
        if os.path.isdir(path):
            shutil.rmtree(path)
            log.info("removed %s", path)
    try:
        os.unlink(cfg.api_socket)
    except FileNotFoundError:
        pass
    log.info("porin state removed from this node")
