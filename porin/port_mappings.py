"""Host ports: the CNI `portMappings` capability (CNI conventions), as the
runtime passes it in `runtimeConfig.portMappings` and the agent serves it
(daemon/hostports.py).

    {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}

`protocol` defaults to tcp; `hostIP` empty (or 0.0.0.0) means every node
address and the loopback. Mappings for an IPv6 `hostIP` are left out: pods
have no IPv6 address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from porin.models import ValidationError

KNOWN = {"hostPort", "containerPort", "protocol", "hostIP"}
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""  # "": every node address and 127.0.0.1

    @property
    def any_address(self) -> bool:
        return not self.host_ip

    def to_json(self) -> dict[str, Any]:
        return {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
            "hostIP": self.host_ip,
        }

    def describe(self) -> str:
        where = self.host_ip or "*"
        return f"{where}:{self.host_port}/{self.protocol} -> {self.container_port}"


def _port(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValidationError(where, f"must be a port 1-65535, got {v!r}")
    return v


def parse_port_mappings(v: Any, where: str = "portMappings") -> list[PortMapping]:
    """Validate the runtime's list; a mapping given twice is kept once, two
    mappings of one host port to different container ports are refused."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValidationError(where, "must be a list of {hostPort, containerPort, protocol}")
    out: dict[tuple[str, int, str], PortMapping] = {}
    for i, m in enumerate(v):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise ValidationError(at, "must be an object {hostPort, containerPort, protocol}")
        unknown = set(m) - KNOWN
        if unknown:
            raise ValidationError(f"{at}.{sorted(unknown)[0]}", "unknown field")
        host_port = _port(m.get("hostPort"), f"{at}.hostPort")
        container_port = _port(m.get("containerPort"), f"{at}.containerPort")
        proto = m.get("protocol") or "tcp"
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise ValidationError(f"{at}.protocol", f"{proto!r}: host ports take tcp or udp")
        raw_ip = m.get("hostIP") or ""
        if not isinstance(raw_ip, str):
            raise ValidationError(f"{at}.hostIP", f"{raw_ip!r} is not an IP address")
        try:
            ip = ipaddress.ip_address(raw_ip) if raw_ip else None
        except ValueError:
            raise ValidationError(f"{at}.hostIP", f"{raw_ip!r} is not an IP address") from None
        if ip is not None and ip.version == 6:
            continue
        host_ip = "" if ip is None or ip.is_unspecified else str(ip)
        pm = PortMapping(host_port, container_port, proto.lower(), host_ip)
        key = (host_ip, host_port, pm.protocol)
        prev = out.get(key)
        if prev is not None and prev != pm:
            raise ValidationError(
                at, f"host port {pm.describe()} is also mapped to {prev.container_port}"
            )
        out[key] = pm
    return list(out.values())


def mappings_from_records(v: Any) -> list[PortMapping]:
    """An endpoint record's mappings (as to_json wrote them)."""
    return parse_port_mappings(v or [])
