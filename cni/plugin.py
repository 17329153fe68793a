"""porin: the CNI plugin (installed as /opt/cni/bin/porin).

A thin client: it validates what the runtime passed, runs a delegated IPAM
plugin if the netconf names one, and hands the work to porin-agent over its
unix socket. The netlink work happens in the agent, so this process imports
nothing heavy.
"""

from __future__ import annotations

import json
import os
import sys

from porin.client import AgentClient, AgentUnavailable, ApiError
from porin.cni import errors
from porin.cni.delegate import run_ipam
from porin.cni.errors import CniError
from porin.cni.netconf import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    CniEnv,
    NetConf,
    endpoint_labels,
    endpoint_port_mappings,
    endpoint_ports,
    parse_env,
    parse_netconf,
    version_tuple,
)
from porin.cni.result import build_result, first_ipv4, merge_dns


def cmd_add(conf: NetConf, env: CniEnv, stdin: bytes) -> dict[str, object]:
    if conf.prev_result is not None:
        raise CniError(
            errors.INVALID_CONFIG, "porin creates the interface: put it first in the chain"
        )
    ipam_result = None
    if conf.ipam is not None:
        ipam_result = run_ipam(conf.ipam["type"], "ADD", stdin, env.environ, env.path)
    req: dict[str, object] = {
        "containerID": env.container_id,
        "ifname": env.ifname,
        "netns": env.netns,
        "network": conf.name,
        "mtu": conf.mtu,
        "labels": endpoint_labels(conf, env),
        "ports": endpoint_ports(conf),
        "portMappings": endpoint_port_mappings(conf),
    }
    try:
        if ipam_result is not None:
            try:
                req["ipv4"], req["gateway"] = first_ipv4(ipam_result)
            except ValueError as e:
                raise CniError(errors.PORIN_IPAM_PLUGIN, str(e)) from None
        ep = _agent(conf, "PUT", "/v1/endpoints", req)
    except CniError:
        if ipam_result is not None:  # give the address back: leak nothing
            try:
                run_ipam(conf.ipam["type"], "DEL", stdin, env.environ, env.path)
            except CniError as e:
                print(f"porin: IPAM rollback failed: {e.msg}", file=sys.stderr)
        raise
    dns = merge_dns(conf.dns, (ipam_result or {}).get("dns"))
    return build_result(conf.cni_version, ep, dns)


def cmd_del(conf: NetConf, env: CniEnv, stdin: bytes) -> None:
    query = f"/v1/endpoints?containerID={env.container_id}&ifname={env.ifname}"
    try:
        AgentClient(conf.agent_socket).request("DELETE", query)
    except AgentUnavailable:
        _del_without_agent(conf, env)
    except ApiError as e:
        raise CniError(e.cni_code or errors.PORIN_INTERNAL, e.message) from None
    if conf.ipam is not None:
        run_ipam(conf.ipam["type"], "DEL", stdin, env.environ, env.path)


def _del_without_agent(conf: NetConf, env: CniEnv) -> None:
    from porin.cni.fallback import delete_link_by_name, leave_pending_delete
    from porin.models import lxc_name

    name = lxc_name(env.container_id, env.ifname)
    try:
        delete_link_by_name(name)
        leave_pending_delete(
            conf.agent_socket,
            name,
            {"containerID": env.container_id, "ifname": env.ifname, "netns": env.netns},
        )
    except OSError as e:
        raise CniError(
            errors.IO_FAILURE, f"porin-agent is down and cleaning up locally failed: {e}"
        ) from None


def cmd_check(conf: NetConf, env: CniEnv, stdin: bytes) -> None:
    if version_tuple(conf.cni_version) < (0, 4, 0):
        raise CniError(errors.INCOMPATIBLE_VERSION, f"CHECK is not defined for {conf.cni_version}")
    if conf.prev_result is None:
        raise CniError(errors.INVALID_CONFIG, "CHECK needs prevResult")
    body = {"containerID": env.container_id, "ifname": env.ifname, "netns": env.netns}
    problems = list(_agent(conf, "POST", "/v1/endpoints/check", body)["problems"])
    query = f"/v1/endpoints?containerID={env.container_id}&ifname={env.ifname}"
    ep = next(iter(_agent(conf, "GET", query)), None)
    if ep is not None:
        want = {ip.get("address", "").split("/")[0] for ip in conf.prev_result.get("ips") or []}
        if ep["ipv4"].split("/")[0] not in want:
            problems.append(f"prevResult does not list the endpoint's address {ep['ipv4']}")
    if conf.ipam is not None:
        run_ipam(conf.ipam["type"], "CHECK", stdin, env.environ, env.path)
    if problems:
        raise CniError(errors.PORIN_CHECK_FAILED, "CHECK failed: " + "; ".join(problems))


def cmd_status(conf: NetConf) -> None:
    try:
        AgentClient(conf.agent_socket, timeout=5).get("/v1/healthz")
    except (AgentUnavailable, ApiError) as e:
        raise CniError(errors.NOT_AVAILABLE, f"porin-agent is not ready: {e}") from None


def cmd_gc(conf: NetConf, env: CniEnv, stdin: bytes) -> None:
    valid = conf.valid_attachments or []
    _agent(conf, "POST", "/v1/gc", {"network": conf.name, "validAttachments": valid})
    if conf.ipam is not None and version_tuple(conf.cni_version) >= (1, 1, 0):
        run_ipam(conf.ipam["type"], "GC", stdin, env.environ, env.path)


def _agent(conf: NetConf, method: str, path: str, body: object = None) -> object:
    try:
        return AgentClient(conf.agent_socket).request(method, path, body)
    except AgentUnavailable as e:
        raise CniError(errors.TRY_AGAIN, str(e), "start porin-agent and retry") from None
    except ApiError as e:
        raise CniError(e.cni_code or errors.PORIN_INTERNAL, e.message) from None


def cmd_version(stdin: bytes) -> dict[str, object]:
    requested = LATEST_VERSION
    try:
        data = json.loads(stdin) if stdin.strip() else {}
        if isinstance(data, dict) and data.get("cniVersion") in SUPPORTED_VERSIONS:
            requested = data["cniVersion"]
    except ValueError:
        pass
    return {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)}


def run(environ: dict[str, str], stdin: bytes) -> tuple[int, dict[str, object] | None]:
    """One plugin invocation: (exit status, JSON to print or None)."""
    version = LATEST_VERSION
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            return 0, cmd_version(stdin)
        conf = parse_netconf(stdin)
        version = conf.cni_version
        if env.command == "ADD":
            return 0, cmd_add(conf, env, stdin)
        if env.command == "DEL":
            cmd_del(conf, env, stdin)
        elif env.command == "CHECK":
            cmd_check(conf, env, stdin)
        elif env.command == "STATUS":
            cmd_status(conf)
        elif env.command == "GC":
            cmd_gc(conf, env, stdin)
        return 0, None
    except CniError as e:
        return 1, e.to_json(version)
    except Exception as e:  # never a traceback instead of the spec's error JSON
        return 1, CniError(errors.PORIN_INTERNAL, f"internal error: {e}").to_json(version)


def main() -> None:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    status, out = run(dict(os.environ), stdin)
    if out is not None:
        sys.stdout.write(json.dumps(out))
        sys.stdout.write("\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
