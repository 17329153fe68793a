"""Compile the real datapath once and run it with BPF_PROG_TEST_RUN.

The maps are pinned under a private bpffs root, so the tests never touch a
running agent's state. BPF_PROG_TEST_RUN runs tc programs with skb->ifindex
1 (loopback), so an endpoint "on this interface" has ifindex 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from lxc_harness import Lxc
from nodeport_net import NODE_IP, OTHER_POD, PEER_MAC, PEER_NODE, REMOTE_POD, THIRD_MAC, THIRD_NODE

from porin.daemon.config import AgentConfig
from porin.daemon.datapath import SOCK_PROGRAMS, compile_programs
from porin.daemon.services import LbMaps, ServiceManager
from porin.maps.conntrack_tables import Conntrack
from porin.maps.endpoints import EndpointsMap
from porin.maps.host_devices import HostDevice, HostDevicesMap, Ifindex
from porin.maps.ipcache import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IpcacheEntry, IpcacheMap
from porin.maps.metrics import MetricsMap
from porin.maps.nat import NatMap
from porin.maps.nonmasq import NonMasqMap
from porin.maps.policy import PolicyMap
from porin.maps.policy_cidr import PolicyCidrMap
from porin.maps.tunnel_config import TunnelConfig, TunnelConfigMap
from porin.maps.xdp_routes4 import XdpRoutesMap


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


@pytest.fixture(scope="module")
def node_net():
    """A namespace with the node network on a veth: routes to the
    other nodes and their neighbours resolved (permanent entries)."""
    name = f"pltest-fib-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "ip link set lo up",
            "ip netns exec sysctl -qw net.ipv4.ip_forward=1",
            "ip link add node0 mtu 1500 type veth peer name node0p",
            f"ip addr add {NODE_IP}/24 dev node0",
            "ip link set node0p up",
            "ip link set node0 up",
            f"ip neigh add {PEER_NODE} lladdr {PEER_MAC} dev node0 nud permanent",
            f"ip neigh add {THIRD_NODE} lladdr {THIRD_MAC} dev node0 nud permanent",
        ):
            if cmd.startswith("ip netns exec"):
                subprocess.run(["ip", "netns", "exec", name, *cmd.split()[3:]], check=True)
            else:
                subprocess.run(["ip", "-n", name, *cmd.split()[1:]], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cluster(lxc, services):
    """This node, two other nodes with a pod each, all in the ipcache."""
    lxc.host_devices.put(Ifindex(1), HostDevice.of(NODE_IP, masquerade=True))
    lxc.ipcache.upsert(IpcacheEntry(f"{REMOTE_POD}/32", 400, PEER_NODE))
    lxc.ipcache.upsert(IpcacheEntry(f"{OTHER_POD}/32", 401, THIRD_NODE))
    for ip in (PEER_NODE, THIRD_NODE):
        lxc.ipcache.upsert(IpcacheEntry(f"{ip}/32", IDENTITY_REMOTE_NODE, "", node=True))
    lxc.ipcache.upsert(IpcacheEntry(f"{NODE_IP}/32", IDENTITY_HOST, "", node=True))
    services.node.node_ips = [NODE_IP]
    services.node.is_local = lambda ip: False
    services.node.xdp_node_ports = True  # XDP on the uplinks
    XdpRoutesMap(os.path.dirname(lxc.endpoints.path)).clear()  # XDP's route cache
    return lxc, services
