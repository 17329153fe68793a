"""API objects exchanged between the agent, the CNI plugin and the CLI.

Typed dataclasses with explicit validation: a malformed request becomes a
`ValidationError` naming the field, which the agent turns into a 400.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from porin.errors import INVALID_CONFIG, PorinError

IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")
CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


def lxc_name(container_id: str, ifname: str) -> str:
    """Host-side veth name: 'lxc' + 12 hex of sha256(container id, ifname)."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return "lxc" + digest[:12]


class ValidationError(PorinError, ValueError):
    """A request field is missing or invalid."""

    http_status = 400
    cni_code = INVALID_CONFIG

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _str(d: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None or v == "":
        if required:
            raise ValidationError(key, "is required")
        return None
    if not isinstance(v, str):
        raise ValidationError(key, f"must be a string, got {type(v).__name__}")
    return v


def validate_container_id(cid: str) -> str:
    if not CONTAINER_ID_RE.match(cid):
        raise ValidationError(
            "containerID", "must start with a letter or digit and hold only [A-Za-z0-9_.-]"
        )
    return cid


def validate_ifname(name: str) -> str:
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise ValidationError("ifname", f"{name!r} is not a valid interface name (1-15 chars)")
    return name


def validate_mtu(mtu: Any) -> int | None:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
        raise ValidationError("mtu", f"must be an integer between 576 and 65535, got {mtu!r}")
    return mtu


def _labels(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise ValidationError("labels", "must be an object of string to string")
    return dict(v)


PORT_NAME_RE = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _ports(v: Any) -> list[dict[str, Any]]:
    """Declared container ports (CNI conventions' portMappings shape, named):
    [{"name", "containerPort", "protocol"}], for policies' named ports."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValidationError("ports", "must be a list of {name, containerPort, protocol}")
    out = []
    for i, p in enumerate(v):
        where = f"ports[{i}]"
        if not isinstance(p, dict):
            raise ValidationError(where, "must be an object {name, containerPort, protocol}")
        unknown = set(p) - {"name", "containerPort", "protocol", "hostPort", "hostIP"}
        if unknown:
            raise ValidationError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        name = p.get("name", "")
        if name and (not isinstance(name, str) or not PORT_NAME_RE.match(name)):
            raise ValidationError(f"{where}.name", f"{name!r} is not a valid port name")
        port = p.get("containerPort")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError(f"{where}.containerPort", f"must be 1-65535, got {port!r}")
        proto = str(p.get("protocol") or "TCP").upper()
        if proto not in ("TCP", "UDP", "SCTP"):
            raise ValidationError(f"{where}.protocol", f"{proto!r} must be TCP, UDP or SCTP")
        out.append({"name": name, "containerPort": port, "protocol": proto})
    return out


# field names whose API spelling is not plain camelCase (the CNI spec's, the request's)
_CAMEL_SPECIAL = {"container_id": "containerID"}


def camel(name: str) -> str:
    """A field name as the API spells it: created_at -> createdAt."""
    if name in _CAMEL_SPECIAL:
        return _CAMEL_SPECIAL[name]
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camel_keys(d: dict[str, Any]) -> dict[str, Any]:
    """A dataclass's asdict() with camelCase keys (one level: values are kept)."""
    return {camel(k): v for k, v in d.items()}


@dataclass
class EndpointRequest:
    """CNI ADD as the plugin forwards it to the agent."""

    container_id: str
    ifname: str
    netns: str
    network: str = "porin"
    mtu: int | None = None
    ipv4: str | None = None  # address/prefix handed out by a delegated IPAM plugin
    gateway: str | None = None  # gateway handed out by a delegated IPAM plugin
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)
    port_mappings: list[dict[str, Any]] = field(default_factory=list)  # porin/port_mappings.py

    @classmethod
    def from_json(cls, d: Any) -> EndpointRequest:
        if not isinstance(d, dict):
            raise ValidationError("body", "must be a JSON object")
        netns = _str(d, "netns")
        assert netns is not None
        if not netns.startswith("/"):
            raise ValidationError("netns", "must be an absolute path")
        ipv4 = _str(d, "ipv4", required=False)
        if ipv4 is not None:
            try:
                iface = ipaddress.IPv4Interface(ipv4)
            except ValueError:
                raise ValidationError("ipv4", f"{ipv4!r} is not an IPv4 address/prefix") from None
            ipv4 = str(iface)
        gateway = _str(d, "gateway", required=False)
        if gateway is not None:
            try:
                gateway = str(ipaddress.IPv4Address(gateway))
            except ValueError:
                raise ValidationError("gateway", f"{gateway!r} is not an IPv4 address") from None
        return cls(
            container_id=validate_container_id(_str(d, "containerID") or ""),
            ifname=validate_ifname(_str(d, "ifname") or ""),
            netns=netns,
            network=_str(d, "network", required=False) or "porin",
            mtu=validate_mtu(d.get("mtu")),
            ipv4=ipv4,
            gateway=gateway,
            labels=_labels(d.get("labels")),
            ports=_ports(d.get("ports")),
            port_mappings=_port_mappings(d.get("portMappings")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "containerID": self.container_id,
            "ifname": self.ifname,
            "netns": self.netns,
            "network": self.network,
            "mtu": self.mtu,
            "ipv4": self.ipv4,
            "gateway": self.gateway,
            "labels": self.labels,
            "ports": self.ports,
            "portMappings": self.port_mappings,
        }


def _port_mappings(v: Any) -> list[dict[str, Any]]:
    from porin.port_mappings import parse_port_mappings

    return [m.to_json() for m in parse_port_mappings(v)]


ENDPOINT_STATES = ("creating", "ready", "disconnected")


class EndpointState(StrEnum):
    CREATING = "creating"  # a crash before READY is undone on the next start
    READY = "ready"
    DELETING = "deleting"


class IpamKind(StrEnum):
    AGENT = "agent"  # the agent's IPAM allocated the address
    PLUGIN = "plugin"  # a delegated IPAM plugin owns it


@dataclass
class Endpoint:
    """An endpoint as the agent owns it: persisted, listed, returned on ADD."""

    id: int
    container_id: str
    ifname: str
    netns: str
    network: str
    ipv4: str  # address/prefix as configured in the pod, e.g. 10.244.0.5/32
    gateway: str
    mtu: int
    host_ifname: str
    ipam: str = "agent"  # "agent" or "plugin" (a delegated IPAM plugin owns the address)
    state: str = EndpointState.CREATING
    mac: str = ""
    host_ifindex: int = 0
    host_mac: str = ""
    pod_ifindex: int = 0
    identity: int = 0  # security identity, from the labels
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)  # declared, for named ports
    port_mappings: list[dict[str, Any]] = field(default_factory=list)  # host ports
    created_at: float = 0.0

    @property
    def ip(self) -> str:
        return self.ipv4.split("/")[0]

    def to_json(self) -> dict[str, Any]:
        """The API's form: camelCase, as every API object."""
        return camel_keys(asdict(self))

    def to_record(self) -> dict[str, Any]:
        """The state dir's form (field names), as older builds wrote it too."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Endpoint:
        """From either form."""
        known = set(cls.__dataclass_fields__)
        by_camel = {camel(f): f for f in known}
        fields = {}
        for k, v in d.items():
            name = k if k in known else by_camel.get(k)
            if name is not None:
                fields[name] = v
        return cls(**fields)


# ---------------------------------------------------------------- services


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class ServiceType(StrEnum):
    CLUSTER_IP = "clusterip"
    NODE_PORT = "nodeport"
    HOST_PORT = "hostport"  # a pod's portMappings (daemon/hostports.py), not from the API


class TrafficPolicy(StrEnum):
    CLUSTER = "cluster"
    LOCAL = "local"  # only this node's backends, the client address kept


class Algorithm(StrEnum):
    RANDOM = "random"
    MAGLEV = "maglev"


class BackendState(StrEnum):
    ACTIVE = "active"
    TERMINATING = "terminating"  # keeps its connections, gets no new ones
    MAINTENANCE = "maintenance"


class ServiceSource(StrEnum):
    API = "api"
    FILE = "file"  # the servicesFile
    HOSTPORT = "hostport"  # a pod's portMappings: made and removed with the pod


SERVICE_PROTOCOLS = tuple(Protocol)
SERVICE_TYPES = tuple(ServiceType)
TRAFFIC_POLICIES = tuple(TrafficPolicy)
MAX_SERVICE_ID = 32767  # reverse-NAT ids above it name NodePort frontends
ALGORITHMS = tuple(Algorithm)
BACKEND_STATES = tuple(BackendState)
SERVICE_SOURCES = tuple(ServiceSource)
MAX_WEIGHT = 100


def parse_ip_port(value: Any, field_name: str) -> tuple[str, int]:
    """'10.0.0.1:80' -> ('10.0.0.1', 80), with a ValidationError naming the field."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValidationError(field_name, f"{value!r} is not IP:PORT")
    host, _, port_s = value.partition(":")
    try:
        ip = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValidationError(field_name, f"{host!r} is not an IPv4 address") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValidationError(field_name, f"port {port_s!r} is not in 1-65535")
    return ip, int(port_s)


@dataclass
class Backend:
    ip: str
    port: int
    weight: int = 1
    state: str = "active"

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @classmethod
    def from_json(cls, d: Any, field_name: str) -> Backend:
        if isinstance(d, str):
            d = {"address": d}
        if not isinstance(d, dict):
            raise ValidationError(field_name, "must be IP:PORT or {address, weight, state}")
        unknown = set(d) - {"address", "weight", "state"}
        if unknown:
            raise ValidationError(field_name, f"unknown field(s) {', '.join(sorted(unknown))}")
        ip, port = parse_ip_port(d.get("address"), f"{field_name}.address")
        weight = d.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValidationError(f"{field_name}.weight", f"must be an integer 0-{MAX_WEIGHT}")
        state = d.get("state", "active")
        if state not in BACKEND_STATES:
            raise ValidationError(
                f"{field_name}.state", f"must be one of {', '.join(BACKEND_STATES)}"
            )
        return cls(ip=ip, port=port, weight=weight, state=BackendState(state))

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "weight": self.weight, "state": self.state}


@dataclass
class Service:
    """A load-balanced frontend (VIP:port/protocol) with its backends."""

    id: int
    ip: str
    port: int
    protocol: str = "tcp"
    type: str = "clusterip"
    backends: list[Backend] = field(default_factory=list)
    algorithm: str = "random"
    affinity_timeout: int = 0
    source: str = "api"  # "api" or "file"
    node_port: int = 0  # nodeport services: the port on every node IP (0: allocate)
    external_traffic_policy: str = "cluster"  # local: only local backends, client kept
    endpoint: int = 0  # hostport services: the endpoint whose portMappings made it

    @property
    def frontend(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def active_backends(self) -> list[Backend]:
        return [b for b in self.backends if b.state == BackendState.ACTIVE and b.weight > 0]

    @classmethod
    def from_json(cls, d: Any, default_id: int = 0) -> Service:
        if not isinstance(d, dict):
            raise ValidationError("service", "must be an object")
        unknown = set(d) - {
            "id",
            "frontend",
            "protocol",
            "type",
            "backends",
            "algorithm",
            "affinityTimeout",
            "source",
            "nodePort",
            "externalTrafficPolicy",
            "endpoint",
        }
        if unknown:
            raise ValidationError("service", f"unknown field(s) {', '.join(sorted(unknown))}")
        sid = d.get("id", default_id)
        if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid <= MAX_SERVICE_ID:
            raise ValidationError("id", f"must be an integer 1-{MAX_SERVICE_ID}")
        ip, port = parse_ip_port(d.get("frontend"), "frontend")
        proto = str(d.get("protocol", "tcp")).lower()
        if proto not in SERVICE_PROTOCOLS:
            raise ValidationError("protocol", f"must be one of {', '.join(SERVICE_PROTOCOLS)}")
        stype = str(d.get("type", "clusterip")).lower()
        if stype not in SERVICE_TYPES:
            raise ValidationError("type", f"must be one of {', '.join(SERVICE_TYPES)}")
        algo = str(d.get("algorithm", "random")).lower()
        if algo not in ALGORITHMS:
            raise ValidationError("algorithm", f"must be one of {', '.join(ALGORITHMS)}")
        aff = d.get("affinityTimeout", 0)
        if isinstance(aff, bool) or not isinstance(aff, int) or not 0 <= aff <= 86400:
            raise ValidationError("affinityTimeout", "must be an integer 0-86400 (seconds)")
        raw_backends = d.get("backends", [])
        if not isinstance(raw_backends, list):
            raise ValidationError("backends", "must be a list")
        backends = [Backend.from_json(b, f"backends[{i}]") for i, b in enumerate(raw_backends)]
        seen: set[str] = set()
        for i, b in enumerate(backends):
            if b.address in seen:
                raise ValidationError(f"backends[{i}]", f"{b.address} is listed twice")
            seen.add(b.address)
        source = d.get("source", "api")
        node_port = d.get("nodePort", 0)
        if (
            isinstance(node_port, bool)
            or not isinstance(node_port, int)
            or not (0 <= node_port <= 65535)
        ):
            raise ValidationError("nodePort", "must be a port number")
        if node_port and stype != ServiceType.NODE_PORT:
            raise ValidationError("nodePort", "is only valid with type nodeport")
        policy = str(d.get("externalTrafficPolicy", "cluster")).lower()
        if policy not in TRAFFIC_POLICIES:
            raise ValidationError(
                "externalTrafficPolicy", f"must be one of {', '.join(TRAFFIC_POLICIES)}"
            )
        endpoint = d.get("endpoint", 0)
        if isinstance(endpoint, bool) or not isinstance(endpoint, int) or endpoint < 0:
            raise ValidationError("endpoint", "must be an endpoint id")
        return cls(
            id=sid,
            ip=ip,
            port=port,
            protocol=Protocol(proto),
            type=ServiceType(stype),
            backends=backends,
            algorithm=Algorithm(algo),
            affinity_timeout=aff,
            source=ServiceSource(source) if source in SERVICE_SOURCES else ServiceSource.API,
            node_port=node_port,
            external_traffic_policy=TrafficPolicy(policy),
            endpoint=endpoint,
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "frontend": self.frontend,
            "protocol": self.protocol,
            "type": self.type,
            "backends": [b.to_json() for b in self.backends],
            "algorithm": self.algorithm,
            "affinityTimeout": self.affinity_timeout,
            "source": self.source,
            "nodePort": self.node_port,
            "externalTrafficPolicy": self.external_traffic_policy,
        }
        if self.endpoint:
            out["endpoint"] = self.endpoint
        return out
