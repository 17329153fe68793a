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

from porin.daemon import links
from porin.daemon.config import AgentConfig
from porin.daemon.store import EndpointStore

log = logging.getLogger("porin.uninstall")


def uninstall(cfg: AgentConfig) -> None:
    from porin.daemon.agent import refuse_if_running

    refuse_if_running(cfg.api_socket)
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
    for path in (cfg.bpffs_root, cfg.state_dir, cfg.pending_delete_dir):
        if os.path.isdir(path):
            shutil.rmtree(path)
            log.info("removed %s", path)
    try:
        os.unlink(cfg.api_socket)
    except FileNotFoundError:
        pass
    log.info("porin state removed from this node")
