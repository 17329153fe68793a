"""Compile the real datapath once and run it with BPF_PROG_TEST_RUN.

The maps are pinned under a private bpffs root, so the tests never touch a
running agent's state. BPF_PROG_TEST_RUN runs tc programs with skb->ifindex
1 (loopback), so an endpoint "on this interface" has ifindex 1.
"""

from __future__ import annotations

import shutil
import uuid

import pytest
from lxc_harness import Lxc

from porin.daemon.config import AgentConfig
from porin.daemon.datapath import SOCK_PROGRAMS, compile_programs
from porin.daemon.services import LbMaps, ServiceManager
from porin.maps.conntrack_tables import Conntrack
from porin.maps.endpoints import EndpointsMap
from porin.maps.host_devices import HostDevicesMap
from porin.maps.ipcache import IpcacheMap
from porin.maps.metrics import MetricsMap
from porin.maps.nat import NatMap
from porin.maps.nonmasq import NonMasqMap
from porin.maps.policy import PolicyMap
from porin.maps.policy_cidr import PolicyCidrMap
from porin.maps.tunnel_config import TunnelConfig, TunnelConfigMap


@pytest.fixture(scope="session")
def lxc_datapath():
    root = f"/sys/fs/bpf/pltest-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig(bpffs_root=root)
    try:  # the pins go also when a program fails to compile or load
        # the programs share the pinned maps, as in the agent
        lxc_mod, progs = compile_programs("bpf_lxc.c", cfg, ["from_container", "to_container"])
        host_mod, host_progs = compile_programs(
            "bpf_host.c", cfg, ["from_netdev", "to_netdev", "from_host_lo"]
        )
        overlay_mod, overlay_progs = compile_programs("bpf_overlay.c", cfg, ["from_overlay"])
        xdp_mod, xdp_progs = compile_programs("bpf_xdp.c", cfg, ["from_xdp"])
        sock_mod, sock_progs = compile_programs("bpf_sock.c", cfg, list(SOCK_PROGRAMS))
        dp = Lxc(
            progs={**progs, **host_progs, **overlay_progs, **xdp_progs, **sock_progs},
            endpoints=EndpointsMap(root),
            metrics=MetricsMap(root),
            ct=Conntrack(root),
            lb=LbMaps.open(root),
            nat=NatMap(root),
            host_devices=HostDevicesMap(root),
            nonmasq=NonMasqMap(root),
            ipcache=IpcacheMap(root),
            tunnel=TunnelConfigMap(root),
            policy=PolicyMap(root),
            policy_cidr=PolicyCidrMap(root),
        )
        yield dp, (lxc_mod, host_mod, overlay_mod, xdp_mod, sock_mod)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _clear(dp: Lxc) -> None:
    dp.endpoints.clear()
    dp.ct.flush()
    dp.nat.clear()
    dp.host_devices.clear()
    dp.nonmasq.clear()
    dp.ipcache.clear()
    dp.tunnel.set(TunnelConfig())
    dp.policy.clear()
    dp.policy_cidr.clear()
    for m in (dp.lb.services, dp.lb.backends, dp.lb.reverse_nat, dp.lb.affinity):
        m.clear()


@pytest.fixture
def lxc(lxc_datapath):
    dp, _module = lxc_datapath
    _clear(dp)
    yield dp
    _clear(dp)


@pytest.fixture
def services(lxc, tmp_path):
    """The agent's real service programming, on the test's maps."""
    return ServiceManager(lxc.lb, str(tmp_path))
