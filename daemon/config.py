"""Agent configuration: YAML file over an embedded single-node default."""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """The agent configuration is invalid; the message names the field of
    each problem (`problems`, one per line when there are several)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


DEFAULT_CONFIG_YAML = """\
# Porin agent, embedded single-node default.
nodeName: ""            # default: the hostname
podCIDR: 10.244.0.0/24
gateway: ""             # default: first address of podCIDR
mtu: 1500
stateDir: /var/run/porin
bpffsRoot: /sys/fs/bpf/porin
apiSocket: /var/run/porin/porin.sock
logLevel: info
servicesFile: ""        # declarative services, reloaded on SIGHUP
maglevTableSize: 16381  # a prime
ctMapSize: 262144       # tracked flows (an LRU)
ctConfirmedMapSize: 131072  # confirmed flows a flood cannot evict; full: new flows refused
ctLifetimeTCPSyn: 60
ctLifetimeTCP: 21600
ctLifetimeTCPClose: 10
ctLifetimeNonTCP: 60
ctGCInterval: 30        # first pass; adapts between ctGCMinInterval and ctGCMaxInterval
ctGCMinInterval: 5
ctGCMaxInterval: 300
devices: []             # uplinks bpf_host.c attaches to (masquerade, NodePort)
nodeIPs: {}             # device -> node IP; default: the device's first IPv4 address
enableMasquerade: true  # pods -> outside nonMasqueradeCIDRs leave as the node IP
nonMasqueradeCIDRs: []  # default: the pod CIDR (and clusterCIDR when set)
clusterCIDR: ""         # all nodes' pod CIDRs, for multi-node clusters
snatPortRange: 32768-60999
nodePortRange: 30000-32767
natMapSize: 131072
kvstore: {}             # {endpoints: [http://IP:2379]}: share nodes, ipcache, identities, services
tunnel: vxlan           # vxlan or ipip between nodes (with a kvstore and devices), or disabled
nodeLeaseTTL: 900       # seconds an agent may be away before the other nodes drop its node
identityGCGracePeriod: 900  # seconds an identity no endpoint uses is kept before release
policyMapSize: 262144   # policy entries of all endpoints (an LPM trie, memory as used)
policyEntriesPerEndpoint: 16384  # a policy that would give an endpoint more is refused
policyCIDRMapSize: 16384 # distinct CIDR prefixes all policies name
nodePortMode: snat      # snat, or dsr: backends on other nodes answer the client directly (XDP)
xdpMode: best-effort    # native, generic, best-effort (native, else generic) or disabled
prefilter: []           # source CIDRs XDP drops on the devices (also `porin prefilter add`)
prefilterMapSize: 16384
loopbackHostPorts: true # host ports also on 127.0.0.1 (cgroup socket hooks, bpf_sock.c)
prometheusListen: 127.0.0.1:9962  # /metrics: HOST:PORT, :PORT for every address, "" off
flowCapture: on-demand  # flow log: on-demand (while observed), always, off
flowBufferSize: 4096    # flows kept in memory for `porin observe`
flowCaptureLinger: 300  # on-demand: seconds capture stays on after the last `porin observe`
flowRateLimit: 5000     # flow events per second and CPU the datapath may write (0: no limit)
healthPort: 4240        # read-only peer API on the node IP (flows for `porin observe --cluster`)
"""


XDP_MODES = ("native", "generic", "best-effort", "disabled")
NODE_PORT_MODES = ("snat", "dsr")
PREFILTER_MAP_MAX = 1 << 22  # two counters each, numbered below 2**24 (bpf/lib/prefilter.h)
FLOW_CAPTURE_MODES = ("on-demand", "always", "off")


@dataclass
class AgentConfig:
    node_name: str = ""
    pod_cidr: str = "10.244.0.0/24"
    gateway: str = ""
    mtu: int = 1500
    state_dir: str = "/var/run/porin"
    bpffs_root: str = "/sys/fs/bpf/porin"
    api_socket: str = "/var/run/porin/porin.sock"
    log_level: str = "info"
    endpoints_map_size: int = 65536
    services_file: str = ""
    maglev_table_size: int = 16381
    ct_map_size: int = 262144
    ct_confirmed_map_size: int = 131072
    policy_map_size: int = 262144
    policy_entries_per_endpoint: int = 16384
    policy_cidr_map_size: int = 16384
    xdp_mode: str = "best-effort"
    node_port_mode: str = "snat"
    prefilter: list[str] = field(default_factory=list)
    prefilter_map_size: int = 16384
    loopback_host_ports: bool = True
    prometheus_listen: str = "127.0.0.1:9962"
    flow_capture: str = "on-demand"
    flow_buffer_size: int = 4096
    flow_capture_linger: float = 300.0
    flow_rate_limit: int = 5000
    health_port: int = 4240
    ct_lifetime_tcp_syn: int = 60
    ct_lifetime_tcp: int = 21600
    ct_lifetime_tcp_close: int = 10
    ct_lifetime_nontcp: int = 60
    ct_gc_interval: float = 30.0
    ct_gc_min_interval: float = 5.0
    ct_gc_max_interval: float = 300.0
    devices: list[str] = field(default_factory=list)
    node_ips: dict[str, str] = field(default_factory=dict)
    enable_masquerade: bool = True
    non_masquerade_cidrs: list[str] = field(default_factory=list)
    cluster_cidr: str = ""
    snat_port_range: str = "32768-60999"
    node_port_range: str = "30000-32767"
    nat_map_size: int = 131072
    kvstore: dict[str, Any] = field(default_factory=dict)
    tunnel: str = "vxlan"
    node_lease_ttl: int = 900  # Cilium's kvstore lease is 15 minutes too
    identity_gc_grace_period: float = 900.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pod_cidr)

    @property
    def tunnel_mode(self) -> str:
        """The overlay in use: only between nodes that share a kvstore, over an uplink."""
        if not self.kvstore or not self.devices:
            return "disabled"
        return self.tunnel

    @property
    def prefilter_slots(self) -> int:
        """Slots of the prefilter's /32 index (maps/prefilter_slots.py)."""
        from porin.maps.prefilter_slots import slots_for

        return slots_for(self.prefilter_map_size)

    @property
    def prefilter_counters(self) -> int:
        """Counters of the prefilter's entries (maps/prefilter_counts.py): one
        per /32 and one per prefix, and the unused 0."""
        return 2 * self.prefilter_map_size + 1

    @property
    def pod_mtu(self) -> int:
        overhead = {"vxlan": 50, "ipip": 20}.get(self.tunnel_mode, 0)
        return self.mtu - overhead

    @property
    def snat_ports(self) -> tuple[int, int]:
        return _port_range(self.snat_port_range, "snatPortRange")

    @property
    def node_ports(self) -> tuple[int, int]:
        return _port_range(self.node_port_range, "nodePortRange")

    @property
    def pending_delete_dir(self) -> str:
        """Where the CNI plugin leaves DELs it could not hand to a stopped agent."""
        return os.path.join(os.path.dirname(self.api_socket), "pending-delete")


_KEYS = {
    "nodeName": "node_name",
    "podCIDR": "pod_cidr",
    "gateway": "gateway",
    "mtu": "mtu",
    "stateDir": "state_dir",
    "bpffsRoot": "bpffs_root",
    "apiSocket": "api_socket",
    "logLevel": "log_level",
    "endpointsMapSize": "endpoints_map_size",
    "servicesFile": "services_file",
    "maglevTableSize": "maglev_table_size",
    "ctMapSize": "ct_map_size",
    "ctConfirmedMapSize": "ct_confirmed_map_size",
    "policyMapSize": "policy_map_size",
    "policyEntriesPerEndpoint": "policy_entries_per_endpoint",
    "policyCIDRMapSize": "policy_cidr_map_size",
    "xdpMode": "xdp_mode",
    "nodePortMode": "node_port_mode",
    "prefilter": "prefilter",
    "prefilterMapSize": "prefilter_map_size",
    "loopbackHostPorts": "loopback_host_ports",
    "prometheusListen": "prometheus_listen",
    "flowCapture": "flow_capture",
    "flowBufferSize": "flow_buffer_size",
    "flowCaptureLinger": "flow_capture_linger",
    "flowRateLimit": "flow_rate_limit",
    "healthPort": "health_port",
    "ctLifetimeTCPSyn": "ct_lifetime_tcp_syn",
    "ctLifetimeTCP": "ct_lifetime_tcp",
    "ctLifetimeTCPClose": "ct_lifetime_tcp_close",
    "ctLifetimeNonTCP": "ct_lifetime_nontcp",
    "ctGCInterval": "ct_gc_interval",
    "ctGCMinInterval": "ct_gc_min_interval",
    "ctGCMaxInterval": "ct_gc_max_interval",
    "devices": "devices",
    "nodeIPs": "node_ips",
    "enableMasquerade": "enable_masquerade",
    "nonMasqueradeCIDRs": "non_masquerade_cidrs",
    "clusterCIDR": "cluster_cidr",
    "snatPortRange": "snat_port_range",
    "nodePortRange": "node_port_range",
    "natMapSize": "nat_map_size",
    "kvstore": "kvstore",
    "tunnel": "tunnel",
    "nodeLeaseTTL": "node_lease_ttl",
    "identityGCGracePeriod": "identity_gc_grace_period",
}


def load_config(path: str | None = None) -> AgentConfig:
    """The embedded default, overridden by the YAML file at `path`."""
    data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
    if path is not None:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        try:
            user = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: invalid YAML{where}: {e}") from None
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: top level must be a mapping of settings")
        data.update(user)
    return from_mapping(data)


def from_mapping(data: dict[str, Any]) -> AgentConfig:
    """The configuration `data` describes; ConfigError lists every problem."""
    cfg = AgentConfig()
    known = {f.name for f in fields(AgentConfig)}
    p = _Problems()
    for key, value in data.items():
        attr = _KEYS.get(key)
        if attr is None:
            p.add(f"{key}: unknown setting{_did_you_mean(str(key))}")
            continue
        assert attr in known
        setattr(cfg, attr, value)
    for check in _CHECKS:
        with p.check():
            check(cfg)
    p.raise_any()
    return cfg


class _Problems:
    """Problems of one configuration, gathered so that all are reported at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ConfigError as e:
            self.items.extend(e.problems)

    def raise_any(self) -> None:
        if len(self.items) == 1:
            raise ConfigError(self.items[0])
        if self.items:
            raise ConfigError(
                f"{len(self.items)} problems:\n" + "\n".join(f"  {m}" for m in self.items),
                problems=self.items,
            )


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, list(_KEYS), n=1, cutoff=0.6)
    if not close:
        close = [k for k in _KEYS if k.lower() == key.lower()]
    return (
        f" (did you mean {close[0]}?)"
        if close
        else " (porin-agent --print-default-config lists them)"
    )


def _check_paths(cfg: AgentConfig) -> None:
    p = _Problems()
    for name in ("state_dir", "bpffs_root", "api_socket"):
        v = getattr(cfg, name)
        with p.check():
            if not isinstance(v, str) or not v.startswith("/"):
                raise ConfigError(f"{_yaml_name(name)}: must be an absolute path, got {v!r}")
    if isinstance(cfg.bpffs_root, str) and cfg.bpffs_root.startswith("/"):
        with p.check():
            _check_bpffs_root(cfg.bpffs_root)
    with p.check():
        if not isinstance(cfg.services_file, str) or (
            cfg.services_file and not cfg.services_file.startswith("/")
        ):
            raise ConfigError("servicesFile: must be an absolute path (or empty)")
    p.raise_any()


def _check_bpffs_root(root: str) -> None:
    """bpffs refuses names with a dot (the kernel keeps them for its own
    files): a pin directory below the mount point must not have one."""
    mount = _bpffs_mount_of(root)
    below = root[len(mount) :] if mount else root
    bad = [c for c in below.split("/") if "." in c]
    if bad:
        raise ConfigError(
            f"bpffsRoot: {root!r} has {bad[0]!r} below the bpffs mount "
            f"{mount or '(none found)'}: bpffs refuses names with a dot"
        )


def _bpffs_mount_of(path: str) -> str:
    """The bpffs mount point holding `path` ('' if none is mounted above it)."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return ""
    best = ""
    for m in mounts:
        if len(m) >= 3 and m[2] == "bpf":
            point = m[1].rstrip("/") or "/"
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best
            ):
                best = point
    return best


def _check_node(cfg: AgentConfig) -> None:
    if not isinstance(cfg.node_name, str):
        raise ConfigError("nodeName: must be a string")
    if not cfg.node_name:
        cfg.node_name = os.uname().nodename


def _check_pod_network(cfg: AgentConfig) -> None:
    try:
        net = ipaddress.IPv4Network(str(cfg.pod_cidr), strict=True)
    except ValueError as e:
        raise ConfigError(f"podCIDR: {e}") from None
    if net.prefixlen > 30:
        raise ConfigError(f"podCIDR: {net} is too small; use /30 or larger")
    cfg.pod_cidr = str(net)
    if not cfg.gateway:
        cfg.gateway = str(net.network_address + 1)
    try:
        gw = ipaddress.IPv4Address(str(cfg.gateway))
    except ValueError as e:
        raise ConfigError(f"gateway: {e}") from None
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise ConfigError(f"gateway: {gw} is not a host address of podCIDR {net}")
    cfg.gateway = str(gw)


def _check_basics(cfg: AgentConfig) -> None:
    p = _Problems()
    with p.check():
        if isinstance(cfg.mtu, bool) or not isinstance(cfg.mtu, int) or not 576 <= cfg.mtu <= 65535:
            raise ConfigError(f"mtu: must be an integer between 576 and 65535, got {cfg.mtu!r}")
    with p.check():
        if str(cfg.log_level).lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"logLevel: must be debug, info, warning or error, got {cfg.log_level!r}"
            )
    with p.check():
        n = cfg.endpoints_map_size
        if isinstance(n, bool) or not isinstance(n, int) or n < 16:
            raise ConfigError(f"endpointsMapSize: must be an integer >= 16, got {n!r}")
    with p.check():
        m = cfg.maglev_table_size
        if (
            isinstance(m, bool)
            or not isinstance(m, int)
            or not 7 <= m <= 131071
            or not _is_prime(m)
        ):
            raise ConfigError(f"maglevTableSize: must be a prime between 7 and 131071, got {m!r}")
    for attr in (
        "ct_map_size",
        "ct_confirmed_map_size",
        "policy_map_size",
        "policy_entries_per_endpoint",
        "policy_cidr_map_size",
        "prefilter_map_size",
        "ct_lifetime_tcp_syn",
        "ct_lifetime_tcp",
        "ct_lifetime_tcp_close",
        "ct_lifetime_nontcp",
    ):
        v = getattr(cfg, attr)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            p.add(f"{_yaml_name(attr)}: must be a positive integer, got {v!r}")
        elif attr == "prefilter_map_size" and v > PREFILTER_MAP_MAX:
            p.add(f"prefilterMapSize: must be at most {PREFILTER_MAP_MAX}, got {v!r}")
    intervals_ok = True
    for attr in ("ct_gc_interval", "ct_gc_min_interval", "ct_gc_max_interval"):
        v = getattr(cfg, attr)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            p.add(f"{_yaml_name(attr)}: must be a positive number, got {v!r}")
            intervals_ok = False
    if intervals_ok and not cfg.ct_gc_min_interval <= cfg.ct_gc_interval <= cfg.ct_gc_max_interval:
        p.add("ctGCInterval: must lie between ctGCMinInterval and ctGCMaxInterval")
    if cfg.node_port_mode not in NODE_PORT_MODES:
        p.add(
            f"nodePortMode: must be one of {', '.join(NODE_PORT_MODES)}, got {cfg.node_port_mode!r}"
        )
    if cfg.xdp_mode not in XDP_MODES:
        p.add(f"xdpMode: must be one of {', '.join(XDP_MODES)}, got {cfg.xdp_mode!r}")
    if cfg.prometheus_listen is None:
        cfg.prometheus_listen = ""
    try:
        parse_listen(cfg.prometheus_listen)
    except ValueError as e:
        p.add(f"prometheusListen: {e}")
    p.raise_any()


def _check_prefilter(cfg: AgentConfig) -> None:
    if not isinstance(cfg.prefilter, list):
        raise ConfigError("prefilter: must be a list of CIDRs")
    p = _Problems()
    seen: dict[ipaddress.IPv4Network, int] = {}
    ours = _own_networks(cfg)
    for i, c in enumerate(cfg.prefilter):
        try:
            net = ipaddress.IPv4Network(str(c), strict=True)
        except ValueError as e:
            p.add(f"prefilter[{i}]: {c!r} is not an IPv4 CIDR: {e}")
            continue
        if net in seen:
            p.add(f"prefilter[{i}]: {net} is listed twice (also prefilter[{seen[net]}])")
        seen.setdefault(net, i)
        for what, own in ours:
            if net.overlaps(own):
                p.add(f"prefilter[{i}]: {net} overlaps {what} {own}: it would cut off pods")
    p.raise_any()


def _own_networks(cfg: AgentConfig) -> list[tuple[str, ipaddress.IPv4Network]]:
    out = []
    for what, text in (("podCIDR", cfg.pod_cidr), ("clusterCIDR", cfg.cluster_cidr)):
        try:
            if text:
                out.append((what, ipaddress.IPv4Network(str(text))))
        except ValueError:
            pass  # reported by its own check
    return out


def _check_flows(cfg: AgentConfig) -> None:
    p = _Problems()
    if cfg.flow_capture not in FLOW_CAPTURE_MODES:
        p.add(
            f"flowCapture: must be one of {', '.join(FLOW_CAPTURE_MODES)}, got {cfg.flow_capture!r}"
        )
    n = cfg.flow_buffer_size
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1_000_000:
        p.add(f"flowBufferSize: must be an integer 1-1000000, got {n!r}")
    v = cfg.flow_capture_linger
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        p.add(f"flowCaptureLinger: must be a number of seconds >= 0, got {v!r}")
    r = cfg.flow_rate_limit
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 1 << 31:
        p.add(f"flowRateLimit: must be an integer >= 0 (0: no limit), got {r!r}")
    port = cfg.health_port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        p.add(f"healthPort: must be a port 1-65535 (0: none), got {port!r}")
    p.raise_any()


def _check_host(cfg: AgentConfig) -> None:
    p = _Problems()
    devices_ok = isinstance(cfg.devices, list) and all(
        isinstance(d, str) and d and len(d) <= 15 for d in cfg.devices
    )
    if not devices_ok:
        p.add(f"devices: must be a list of interface names, got {cfg.devices!r}")
    if not isinstance(cfg.node_ips, dict):
        p.add("nodeIPs: must map device names to IPv4 addresses")
    else:
        for dev, ip in cfg.node_ips.items():
            if devices_ok and dev not in cfg.devices:
                p.add(f"nodeIPs: {dev} is not in devices")
                continue
            try:
                cfg.node_ips[dev] = str(ipaddress.IPv4Address(str(ip)))
            except ValueError:
                p.add(f"nodeIPs.{dev}: {ip!r} is not an IPv4 address")
    if not isinstance(cfg.enable_masquerade, bool):
        p.add(f"enableMasquerade: must be true or false, got {cfg.enable_masquerade!r}")
    if not isinstance(cfg.loopback_host_ports, bool):
        p.add(f"loopbackHostPorts: must be true or false, got {cfg.loopback_host_ports!r}")
    with p.check():
        _check_cidrs(cfg)
    ranges = []
    for name in ("snatPortRange", "nodePortRange"):
        with p.check():
            ranges.append(_port_range(getattr(cfg, _KEYS[name]), name))
    if len(ranges) == 2:
        (slo, shi), (nlo, nhi) = ranges
        if slo <= nhi and nlo <= shi:
            p.add("snatPortRange: must not overlap nodePortRange")
        for name, (lo, hi) in zip(("snatPortRange", "nodePortRange"), ranges, strict=True):
            if lo <= 8472 <= hi:
                p.add(f"{name}: must not include 8472, the VXLAN port")
    n = cfg.nat_map_size
    if isinstance(n, bool) or not isinstance(n, int) or n < 16:
        p.add(f"natMapSize: must be an integer >= 16, got {n!r}")
    p.raise_any()


def _check_cidrs(cfg: AgentConfig) -> None:
    p = _Problems()
    if cfg.cluster_cidr:
        try:
            cluster = ipaddress.IPv4Network(str(cfg.cluster_cidr))
            cfg.cluster_cidr = str(cluster)
            pod = ipaddress.IPv4Network(cfg.pod_cidr)
            if not pod.subnet_of(cluster):
                p.add(f"clusterCIDR: {cluster} does not contain podCIDR {pod}")
        except ValueError as e:
            p.add(f"clusterCIDR: {e}")
    if not isinstance(cfg.non_masquerade_cidrs, list):
        raise ConfigError("nonMasqueradeCIDRs: must be a list of CIDRs")
    cidrs = []
    for i, c in enumerate(cfg.non_masquerade_cidrs):
        try:
            cidrs.append(str(ipaddress.IPv4Network(str(c))))
        except ValueError as e:
            p.add(f"nonMasqueradeCIDRs[{i}]: {e}")
    p.raise_any()
    if not cidrs:
        cidrs = [cfg.pod_cidr] + ([cfg.cluster_cidr] if cfg.cluster_cidr else [])
    cfg.non_masquerade_cidrs = cidrs


def _check_cluster(cfg: AgentConfig) -> None:
    p = _Problems()
    if cfg.kvstore is None:
        cfg.kvstore = {}
    if not isinstance(cfg.kvstore, dict):
        p.add("kvstore: must be a mapping like {endpoints: [http://IP:2379]}")
    elif cfg.kvstore:
        unknown = sorted(set(cfg.kvstore) - {"endpoints"})
        if unknown:
            p.add(f"kvstore: unknown setting {unknown[0]!r} (only endpoints)")
        eps = cfg.kvstore.get("endpoints")
        if (
            not isinstance(eps, list)
            or not eps
            or not all(isinstance(e, str) and e.startswith(("http://", "https://")) for e in eps)
        ):
            p.add("kvstore.endpoints: must be a list of http(s)://HOST:PORT URLs")
    if cfg.tunnel not in ("vxlan", "ipip", "disabled"):
        p.add(f"tunnel: must be vxlan, ipip or disabled, got {cfg.tunnel!r}")
    ttl = cfg.node_lease_ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 2 <= ttl <= 3600:
        p.add(f"nodeLeaseTTL: must be an integer 2-3600 (seconds), got {ttl!r}")
    g = cfg.identity_gc_grace_period
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not 1 <= g <= 30 * 86400:
        p.add(f"identityGCGracePeriod: must be 1-2592000 seconds, got {g!r}")
    p.raise_any()


# Each check reports all it finds; one failing does not hide the others.
# The pod network comes before the checks that compare CIDRs with it.
_CHECKS = (
    _check_paths,
    _check_node,
    _check_pod_network,
    _check_basics,
    _check_flows,
    _check_host,
    _check_prefilter,
    _check_cluster,
)


def parse_listen(text: str) -> tuple[str, int] | None:
    """A listen address: "HOST:PORT", "[V6]:PORT" or ":PORT" (every address);
    empty: None (disabled). HOST is an IP address."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string like 127.0.0.1:9962, got {text!r}")
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9962, or :9962 for all)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IP address") from None
    return host, int(port)


def _port_range(text: str, name: str) -> tuple[int, int]:
    lo, sep, hi = str(text).partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ConfigError(f"{name}: must be LOW-HIGH, got {text!r}")
    a, b = int(lo), int(hi)
    if not 1 <= a <= b <= 65535:
        raise ConfigError(f"{name}: {text!r} is not a port range within 1-65535")
    return a, b


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % i for i in range(2, int(n**0.5) + 1))


def _yaml_name(attr: str) -> str:
    return next(k for k, v in _KEYS.items() if v == attr)
