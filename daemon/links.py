"""Netlink work for endpoints and the node: veth pairs, pod addressing, routes.

All of it runs in the long-lived agent, which has pyroute2 loaded already;
the CNI plugin process never imports it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from porin.daemon.netns import NetnsError, iproute_in, open_netns
from porin.errors import PORIN_INTERFACE, PorinError
from porin.models import lxc_name  # noqa: F401  (re-exported for callers)

log = logging.getLogger("porin.links")

RT_SCOPE_LINK = 253
HOST_DEVICE = "porin_host"
HOST_PEER = "porin_net"


class LinkError(PorinError, RuntimeError):
    """A netlink operation on an endpoint or node device failed."""

    http_status = 409
    cni_code = PORIN_INTERFACE


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_mac(ipr: IPRoute, index: int) -> str:
    return ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")


@dataclass
class PodLink:
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_ifindex: int
    pod_mac: str


def create_pod_link(
    ipr: IPRoute,
    host_ifname: str,
    netns: str,
    ifname: str,
    address: ipaddress.IPv4Interface,
    gateway: str,
    mtu: int,
) -> PodLink:
    """Create the veth pair and configure the pod side.

    The pod gets `address` (a /32), an on-link route to the gateway and a
    default route through it. On failure the pair is removed again.
    """
    nsfd = open_netns(netns)
    try:
        pod = iproute_in(netns)
    except NetnsError:
        os.close(nsfd)
        raise
    try:
        if pod.link_lookup(ifname=ifname):
            raise LinkError(f"interface {ifname} already exists in {netns}")
        try:
            ipr.link(
                "add",
                ifname=host_ifname,
                kind="veth",
                mtu=mtu,
                peer={"ifname": ifname, "net_ns_fd": nsfd, "mtu": mtu},
            )
        except NetlinkError as e:
            raise LinkError(f"cannot create veth {host_ifname}/{ifname}: {e}") from e
        try:
            return _configure(ipr, pod, host_ifname, ifname, address, gateway)
        except Exception:
            delete_link(ipr, host_ifname)
            raise
    finally:
        os.close(nsfd)
        pod.close()


def _configure(
    ipr: IPRoute,
    pod: IPRoute,
    host_ifname: str,
    ifname: str,
    address: ipaddress.IPv4Interface,
    gateway: str,
) -> PodLink:
    host_idx = link_index(ipr, host_ifname)
    pod_idx = link_index(pod, ifname)
    if host_idx is None or pod_idx is None:
        raise LinkError(f"veth {host_ifname}/{ifname} vanished while configuring it")
    try:
        harden_host_veth(host_ifname)
        ipr.link("set", index=host_idx, state="up")
        pod.link("set", index=pod_idx, state="up")
        pod.addr("add", index=pod_idx, address=str(address.ip), prefixlen=address.network.prefixlen)
        pod.route("add", dst=f"{gateway}/32", oif=pod_idx, scope=RT_SCOPE_LINK)
        pod.route("add", dst="0.0.0.0/0", gateway=gateway, oif=pod_idx)
    except (NetlinkError, OSError) as e:
        raise LinkError(f"cannot configure {ifname} in the pod: {e}") from e
    return PodLink(
        host_ifname=host_ifname,
        host_ifindex=host_idx,
        host_mac=link_mac(ipr, host_idx),
        pod_ifindex=pod_idx,
        pod_mac=link_mac(pod, pod_idx),
    )


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link by name; False if it did not exist."""
    idx = link_index(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as e:
        if e.code == 19:  # ENODEV: raced with the kernel removing it
            return False
        raise LinkError(f"cannot delete {name}: {e}") from e
    return True


def add_host_route(ipr: IPRoute, ip: str, ifindex: int) -> None:
    """Route the pod address to its veth from the node."""
    try:
        ipr.route("replace", dst=f"{ip}/32", oif=ifindex, scope=RT_SCOPE_LINK)
    except NetlinkError as e:
        raise LinkError(f"cannot add host route to {ip}: {e}") from e


def has_host_route(ipr: IPRoute, ip: str, ifindex: int) -> bool:
    for r in ipr.get_routes(family=2, dst=ip, dst_len=32):
        if r.get_attr("RTA_OIF") == ifindex:
            return True
    return False


# What the node's side of a pod veth must and must not do. IPv4: accept
# replies carrying a node address (NodePort flows from the node itself,
# translated back), take no ICMP redirect from the pod and send none. IPv6,
# until Porin routes it: no address of its own (so no stack behind it), no
# router advertisements, no forwarding: a pod's router advertisement would
# give the node an address from the pod's prefix, or the pod as its router.
# The datapath drops pods' IPv6 too (bpf/lib/ipv6.h); these hold even while
# no program is attached. Order matters: IPv6 is disabled before the link
# comes up, so it never gets a link-local address.
HOST_VETH_IPV4 = (("accept_local", "1"), ("accept_redirects", "0"), ("send_redirects", "0"))
HOST_VETH_IPV6 = (("disable_ipv6", "1"), ("accept_ra", "0"), ("forwarding", "0"))


def _host_veth_settings(host_ifname: str) -> list[tuple[str, str]]:
    out = [(f"net/ipv4/conf/{host_ifname}/{k}", v) for k, v in HOST_VETH_IPV4]
    if os.path.isdir("/proc/sys/net/ipv6"):  # a kernel booted without IPv6 has none
        out += [(f"net/ipv6/conf/{host_ifname}/{k}", v) for k, v in HOST_VETH_IPV6]
    return out


def harden_host_veth(host_ifname: str) -> None:
    """Set what the node's side of a pod veth must hold, before it comes up."""
    try:
        for path, value in _host_veth_settings(host_ifname):
            set_sysctl(path, value)
    except OSError as e:
        raise LinkError(f"cannot set {e.filename}: {e.strerror}") from e


def host_veth_problems(host_ifname: str) -> list[str]:
    """Which of harden_host_veth's settings do not hold (CNI CHECK)."""
    problems = []
    for path, value in _host_veth_settings(host_ifname):
        try:
            with open(os.path.join("/proc/sys", path)) as f:
                actual = f.read().strip()
        except OSError as e:
            problems.append(f"cannot read {path}: {e.strerror}")
            continue
        if actual != value:
            problems.append(f"{path.replace('/', '.')} is {actual}, expected {value}")
    return problems


def set_sysctl(path: str, value: str) -> None:
    with open(os.path.join("/proc/sys", path), "w") as f:
        f.write(value)


def loosen_rp_filter(device: str) -> None:
    """Reverse-path filtering on `device` at most loose (2): packets from pods of
    other nodes arrive there, and their way back leaves through porin_host.
    The kernel applies the larger of `all` and the device's value, so a
    strict (1) `all` becomes loose for this device only."""
    conf = "net/ipv4/conf"
    with open(os.path.join("/proc/sys", conf, "all", "rp_filter")) as f:
        strict_all = f.read().strip() == "1"
    with open(os.path.join("/proc/sys", conf, device, "rp_filter")) as f:
        mine = f.read().strip()
    if strict_all or mine == "1":
        set_sysctl(f"{conf}/{device}/rp_filter", "2")


def ensure_host_device(ipr: IPRoute, gateway: str, pod_cidr: str, mtu: int) -> int:
    """The node's porin_host/porin_net veth pair, holding the pods' gateway address.

    The rest of the pod CIDR is made unreachable from the node, so traffic to a
    pod that does not exist fails fast instead of leaving through a default route.
    """
    idx = link_index(ipr, HOST_DEVICE)
    if idx is None:
        try:
            ipr.link("add", ifname=HOST_DEVICE, kind="veth", mtu=mtu, peer={"ifname": HOST_PEER})
        except NetlinkError as e:
            raise LinkError(f"cannot create {HOST_DEVICE}: {e}") from e
        idx = link_index(ipr, HOST_DEVICE)
        assert idx is not None
    peer = link_index(ipr, HOST_PEER)
    ipr.link("set", index=idx, state="up")
    if peer is not None:
        ipr.link("set", index=peer, state="up")
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    if gateway not in have:
        ipr.addr("add", index=idx, address=gateway, prefixlen=32)
    try:
        ipr.route("replace", dst=pod_cidr, type="unreachable")
    except NetlinkError as e:
        raise LinkError(f"cannot add unreachable route for {pod_cidr}: {e}") from e
    set_sysctl("net/ipv4/ip_forward", "1")
    return idx


def remove_host_device(ipr: IPRoute, pod_cidr: str) -> None:
    delete_link(ipr, HOST_DEVICE)
    try:
        ipr.route("del", dst=pod_cidr, type="unreachable")
    except NetlinkError:
        pass


@dataclass
class PodView:
    """What CHECK inspects inside the pod."""

    exists: bool
    up: bool = False
    mtu: int = 0
    mac: str = ""
    addresses: tuple[str, ...] = ()
    routes: tuple[tuple[str, str | None], ...] = ()  # (dst, gateway)


def inspect_pod(netns: str, ifname: str) -> PodView:
    pod = iproute_in(netns)
    try:
        idx = link_index(pod, ifname)
        if idx is None:
            return PodView(exists=False)
        link = pod.get_links(idx)[0]
        addrs = tuple(
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in pod.get_addr(index=idx, family=2)
        )
        routes = []
        for r in pod.get_routes(family=2, table=254):
            if r.get_attr("RTA_OIF") != idx:
                continue
            dst = r.get_attr("RTA_DST")
            routes.append(
                (f"{dst}/{r['dst_len']}" if dst else "0.0.0.0/0", r.get_attr("RTA_GATEWAY"))
            )
        return PodView(
            exists=True,
            up=bool(link["flags"] & 1),
            mtu=link.get_attr("IFLA_MTU"),
            mac=link.get_attr("IFLA_ADDRESS"),
            addresses=addrs,
            routes=tuple(routes),
        )
    finally:
        pod.close()
