"""Agent configuration: YAML file over an embedded single-node default."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """The agent configuration is invalid; the message names the field."""


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
"""


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pod_cidr)

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
    cfg = AgentConfig()
    known = {f.name for f in fields(AgentConfig)}
    for key, value in data.items():
        attr = _KEYS.get(key)
        if attr is None:
            cfg.extra[key] = value
            continue
        assert attr in known
        setattr(cfg, attr, value)
    _validate(cfg)
    return cfg


def _validate(cfg: AgentConfig) -> None:
    for name in ("state_dir", "bpffs_root", "api_socket"):
        v = getattr(cfg, name)
        if not isinstance(v, str) or not v.startswith("/"):
            raise ConfigError(f"{_yaml_name(name)}: must be an absolute path, got {v!r}")
    if not isinstance(cfg.node_name, str):
        raise ConfigError("nodeName: must be a string")
    if not cfg.node_name:
        cfg.node_name = os.uname().nodename
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
    if isinstance(cfg.mtu, bool) or not isinstance(cfg.mtu, int) or not 576 <= cfg.mtu <= 65535:
        raise ConfigError(f"mtu: must be an integer between 576 and 65535, got {cfg.mtu!r}")
    if str(cfg.log_level).lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"logLevel: must be debug, info, warning or error, got {cfg.log_level!r}")
    if not isinstance(cfg.endpoints_map_size, int) or cfg.endpoints_map_size < 16:
        raise ConfigError("endpointsMapSize: must be an integer >= 16")


def _yaml_name(attr: str) -> str:
    return next(k for k, v in _KEYS.items() if v == attr)
