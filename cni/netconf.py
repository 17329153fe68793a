"""Network configuration and CNI_* environment, parsed and validated.

Kept free of heavy imports (no dataclasses, typing or subprocess): this
runs in every CNI invocation, where the runtime waits for it.
"""

from __future__ import annotations

import json
import re

from porin.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    CniError,
)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
DEFAULT_SOCKET = "/var/run/porin/porin.sock"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


class NetConf:
    """A validated network configuration."""

    def __init__(
        self,
        cni_version: str,
        name: str,
        type: str,  # noqa: A002 - the spec's field name
        raw: dict,
        mtu: int | None = None,
        ipam: dict | None = None,
        dns: dict | None = None,
        agent_socket: str = DEFAULT_SOCKET,
        prev_result: dict | None = None,
        runtime_config: dict | None = None,
        args: dict | None = None,
        valid_attachments: list[dict] | None = None,
    ) -> None:
        self.cni_version = cni_version
        self.name = name
        self.type = type
        self.raw = raw
        self.mtu = mtu
        self.ipam = ipam
        self.dns = dns
        self.agent_socket = agent_socket
        self.prev_result = prev_result
        self.runtime_config = runtime_config or {}
        self.args = args or {}
        self.valid_attachments = valid_attachments


def _bad(msg: str) -> CniError:
    return CniError(INVALID_CONFIG, f"invalid network configuration: {msg}")


def parse_netconf(data: bytes) -> NetConf:
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise CniError(DECODE_FAILURE, f"network configuration is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")

    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise _bad("cniVersion is required")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"porin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _bad("name is required and must match [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    ptype = raw.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise _bad("type is required")

    mtu = raw.get("mtu")
    if mtu is not None and (
        isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535
    ):
        raise _bad(f"mtu must be an integer between 576 and 65535, got {mtu!r}")
    ipam = raw.get("ipam")
    if ipam is not None and not isinstance(ipam, dict):
        raise _bad("ipam must be an object")
    if ipam == {}:
        ipam = None
    if ipam is not None and (not isinstance(ipam.get("type"), str) or not ipam["type"]):
        raise _bad("ipam.type is required when an ipam section is given")
    if ipam is not None and "/" in ipam["type"]:
        raise _bad("ipam.type must be a plugin name, not a path")
    dns = raw.get("dns")
    if dns is not None:
        _check_dns(dns)
    sock = raw.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _bad("agentSocket must be an absolute path")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("prevResult must be an object")
    rc = raw.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        raise _bad("runtimeConfig must be an object")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise _bad("args must be an object")
    valid = raw.get("cni.dev/valid-attachments")
    if valid is not None:
        if not isinstance(valid, list) or not all(
            isinstance(a, dict)
            and isinstance(a.get("containerID"), str)
            and isinstance(a.get("ifname"), str)
            for a in valid
        ):
            raise _bad("cni.dev/valid-attachments must be a list of {containerID, ifname}")
    return NetConf(
        cni_version=version,
        name=name,
        type=ptype,
        raw=raw,
        mtu=mtu,
        ipam=ipam,
        dns=dns,
        agent_socket=sock,
        prev_result=prev,
        runtime_config=rc,
        args=args,
        valid_attachments=valid,
    )


def _check_dns(dns: object) -> None:
    if not isinstance(dns, dict):
        raise _bad("dns must be an object")
    for key in ("nameservers", "search", "options"):
        v = dns.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise _bad(f"dns.{key} must be a list of strings")
    if dns.get("domain") is not None and not isinstance(dns["domain"], str):
        raise _bad("dns.domain must be a string")


class CniEnv:
    """The CNI_* parameters of one invocation."""

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: dict[str, str] | None = None,
        path: list[str] | None = None,
        environ: dict[str, str] | None = None,  # passed on to delegated plugins
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args or {}
        self.path = path or []
        self.environ = environ or {}


def parse_env(environ: dict[str, str]) -> CniEnv:
    cmd = environ.get("CNI_COMMAND", "")
    if cmd not in COMMANDS:
        raise CniError(
            INVALID_ENV,
            f"CNI_COMMAND is {cmd!r}" if cmd else "CNI_COMMAND is not set",
            f"expected one of {', '.join(COMMANDS)}",
        )
    env = CniEnv(command=cmd, environ=dict(environ))
    if cmd in ("VERSION", "STATUS", "GC"):
        env.path = _split_path(environ.get("CNI_PATH", ""))
        return env
    env.container_id = environ.get("CNI_CONTAINERID", "")
    if not env.container_id:
        raise CniError(INVALID_ENV, "CNI_CONTAINERID is not set")
    if not _CONTAINER_ID_RE.match(env.container_id):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {env.container_id!r} has invalid characters")
    env.ifname = environ.get("CNI_IFNAME", "")
    if not env.ifname:
        raise CniError(INVALID_ENV, "CNI_IFNAME is not set")
    if not _IFNAME_RE.match(env.ifname) or env.ifname in (".", ".."):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {env.ifname!r} is not a valid interface name")
    env.netns = environ.get("CNI_NETNS", "")
    if cmd in ("ADD", "CHECK"):
        if not env.netns:
            raise CniError(INVALID_ENV, "CNI_NETNS is not set")
        if not env.netns.startswith("/"):
            raise CniError(INVALID_ENV, f"CNI_NETNS {env.netns!r} must be an absolute path")
    env.path = _split_path(environ.get("CNI_PATH", ""))
    if cmd in ("ADD", "DEL", "CHECK") and not env.path and "CNI_PATH" not in environ:
        raise CniError(INVALID_ENV, "CNI_PATH is not set")
    env.args = parse_cni_args(environ.get("CNI_ARGS", ""))
    return env


def _split_path(p: str) -> list[str]:
    return [d for d in p.split(":") if d]


def parse_cni_args(s: str) -> dict[str, str]:
    """CNI_ARGS: 'K1=V1;K2=V2'."""
    out: dict[str, str] = {}
    for part in s.split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise CniError(INVALID_ENV, f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        out[k] = v
    return out


def endpoint_labels(conf: NetConf, env: CniEnv) -> dict[str, str]:
    """Labels for the endpoint from CNI_ARGS, runtimeConfig and args (conventions.md)."""
    labels: dict[str, str] = {}
    if env.args.get("K8S_POD_NAMESPACE"):
        labels["k8s:io.kubernetes.pod.namespace"] = env.args["K8S_POD_NAMESPACE"]
    if env.args.get("K8S_POD_NAME"):
        labels["k8s:io.kubernetes.pod.name"] = env.args["K8S_POD_NAME"]
    for source in (conf.runtime_config.get("labels"), (conf.args.get("cni") or {}).get("labels")):
        if isinstance(source, dict):
            labels.update({str(k): str(v) for k, v in source.items()})
        elif isinstance(source, list):
            for item in source:
                if isinstance(item, dict) and "key" in item and "value" in item:
                    labels[str(item["key"])] = str(item["value"])
    return labels


def endpoint_ports(conf: NetConf) -> list[object]:
    """Declared container ports, for named ports in network policy:
    `args.cni.ports` (or runtimeConfig `ports`), [{name, containerPort, protocol}].
    The agent validates them."""
    for source in ((conf.args.get("cni") or {}).get("ports"), conf.runtime_config.get("ports")):
        if source is not None:
            if not isinstance(source, list):
                raise _bad("args.cni.ports must be a list of {name, containerPort, protocol}")
            return list(source)
    return []


def endpoint_port_mappings(conf: NetConf) -> list[object]:
    """The host ports the runtime asks for (the `portMappings` capability,
    in runtimeConfig). The agent validates them."""
    source = conf.runtime_config.get("portMappings")
    if source is None:
        return []
    if not isinstance(source, list):
        raise _bad(
            "runtimeConfig.portMappings must be a list of {hostPort, containerPort, protocol}"
        )
    return list(source)
