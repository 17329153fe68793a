"""Build the CNI ADD result in the version the runtime asked for."""

from __future__ import annotations

from porin.cni.netconf import version_tuple


def build_result(
    cni_version: str, ep: dict[str, object], dns: dict[str, object] | None = None
) -> dict[str, object]:
    """The spec result for an endpoint as the agent returned it."""
    v = version_tuple(cni_version)
    pod_if: dict[str, object] = {"name": ep["ifname"], "mac": ep["mac"], "sandbox": ep["netns"]}
    if v >= (1, 1, 0):
        pod_if["mtu"] = ep["mtu"]
    ip: dict[str, object] = {"address": ep["ipv4"], "gateway": ep["gateway"], "interface": 1}
    if v < (1, 0, 0):  # 0.3.x and 0.4.0 carry the address family
        ip["version"] = "4"
    result: dict[str, object] = {
        "cniVersion": cni_version,
        "interfaces": [{"name": ep["hostIfname"], "mac": ep["hostMac"]}, pod_if],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": ep["gateway"]}],
    }
    if dns:
        result["dns"] = {k: v for k, v in dns.items() if v}
    return result


def merge_dns(*sources: dict[str, object] | None) -> dict[str, object] | None:
    """Netconf dns first, then anything an IPAM plugin returned."""
    out: dict[str, object] = {}
    for src in sources:
        if not src:
            continue
        for key in ("nameservers", "search", "options"):
            for item in src.get(key) or []:
                out.setdefault(key, [])
                if item not in out[key]:
                    out[key].append(item)
        if src.get("domain") and "domain" not in out:
            out["domain"] = src["domain"]
    return out or None


def first_ipv4(ipam_result: dict[str, object]) -> tuple[str, str | None]:
    """(address/prefix, gateway) of the first IPv4 entry of an IPAM result."""
    for ip in ipam_result.get("ips") or []:
        addr = ip.get("address", "")
        if ":" not in addr and "/" in addr:
            return addr, ip.get("gateway")
    raise ValueError("IPAM plugin returned no IPv4 address")
