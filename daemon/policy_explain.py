"""`porin policy explain`: the verdict the live maps give a connection, and why.

Everything is read from the pinned maps the datapath uses (endpoints,
ipcache, policy_cidr, policy), nothing is changed: the same lookups as
bpf/lib/policy.h:policy_decide, done with the kernel's own LPM lookup, and
for each the entry that matched.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from porin.daemon.policy_compile import IDENTITY_ANY, IDENTITY_WORLD
from porin.maps.endpoints import (
    ENDPOINT_F_POLICY_EGRESS,
    ENDPOINT_F_POLICY_INGRESS,
    EndpointEntry,
    EndpointsMap,
)
from porin.maps.ipcache import IpcacheMap
from porin.maps.policy import DIRECTIONS, POLICY_F_DENY, PREFIX_FULL, PolicyKey, PolicyMap
from porin.maps.policy_cidr import PolicyCidrKey, PolicyCidrMap

PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}


def ipcache_identity(ipcache: IpcacheMap, ip: str) -> tuple[int, str]:
    """(identity, matched prefix) as lib/ipcache.h:identity_of finds it."""
    addr = ipaddress.IPv4Address(ip)
    best = None
    for e in ipcache.entries():
        net = ipaddress.IPv4Network(e.prefix)
        if addr in net and (best is None or net.prefixlen > best[1].prefixlen):
            best = (e.identity, net)
    if best is None:
        return IDENTITY_WORLD, "(none: world)"
    return best[0], str(best[1])


def _lookup(
    pmap: PolicyMap,
    entries: list[Any],
    ep_id: int,
    direction: str,
    identity: int,
    proto: int,
    port: int,
) -> dict[str, Any] | None:
    key = PolicyKey(
        prefixlen=PREFIX_FULL,
        ep_id=ep_id,
        dir=DIRECTIONS[direction],
        identity=identity,
        proto=proto,
        dport=socket.htons(port),
    )
    v = pmap.get(key)
    if v is None:
        return None
    # the entry the kernel's longest-prefix match returned: the most specific covering one
    match = None
    for k, _ in entries:
        if (k.ep_id, k.direction, k.identity) != (ep_id, direction, identity):
            continue
        if k.proto and k.proto != proto:
            continue
        lo, hi = k.port_range
        if k.proto and not lo <= port <= hi:
            continue
        spec = (1 if k.proto else 0, k.port_bits)
        if match is None or spec > match[0]:
            match = (spec, k)
    out: dict[str, Any] = {
        "ruleId": v.rule_id,
        "deny": bool(v.flags & POLICY_F_DENY),
        "packets": v.packets,
    }
    if match is not None:
        k = match[1]
        lo, hi = k.port_range
        out["entry"] = {
            "protocol": k.proto,
            "ports": "any"
            if not k.proto or not k.port_bits
            else (str(lo) if lo == hi else f"{lo}-{hi}"),
        }
    return out


def decide(
    pmap: PolicyMap,
    cidr_map: PolicyCidrMap,
    ep: EndpointEntry,
    direction: str,
    remote_identity: int,
    remote_ip: str,
    proto: int,
    port: int,
) -> dict[str, Any]:
    """One direction's decision, as policy_decide makes it."""
    want = ENDPOINT_F_POLICY_INGRESS if direction == "ingress" else ENDPOINT_F_POLICY_EGRESS
    out: dict[str, Any] = {
        "direction": direction,
        "endpoint": ep.endpoint_id,
        "enforced": bool(ep.flags & want),
        "policyRevision": ep.policy_rev,
        "lookups": [],
    }
    if not out["enforced"]:
        out["verdict"] = "ALLOWED"
        out["why"] = f"no policy selects endpoint {ep.endpoint_id} for {direction}"
        return out
    cidr_v = cidr_map.get(PolicyCidrKey.of(f"{remote_ip}/32"))
    cidr_id = cidr_v.value if cidr_v is not None else 0
    entries = [(k, v) for k, v in pmap.entries() if k.ep_id == ep.endpoint_id]
    candidates = []
    if remote_identity:
        candidates.append(("identity", remote_identity))
    candidates.append(("any identity", IDENTITY_ANY))
    if cidr_id:
        candidates.append(("CIDR identity", cidr_id))
    chosen = None
    for what, ident in candidates:
        hit = _lookup(pmap, entries, ep.endpoint_id, direction, ident, proto, port)
        out["lookups"].append({"as": what, "identity": ident, "match": hit})
        if hit is None:
            continue
        if chosen is None or (hit["deny"] and not chosen["deny"]):
            chosen = hit
    if chosen is None:
        out["verdict"] = "DENIED"
        out["reason"] = "DROP_POLICY"
        out["ruleId"] = 0
        out["why"] = "no entry matched: default deny"
    else:
        out["verdict"] = "DENIED" if chosen["deny"] else "ALLOWED"
        out["reason"] = "DROP_POLICY_DENY" if chosen["deny"] else ""
        out["ruleId"] = chosen["ruleId"]
        out["why"] = (
            "a deny entry matched (deny wins)" if chosen["deny"] else "an allow entry matched"
        )
    return out


def explain(bpffs_root: str, src_ip: str, dst_ip: str, proto: int, port: int) -> dict[str, Any]:
    with (
        EndpointsMap(bpffs_root, read_only=True) as eps,
        IpcacheMap(bpffs_root, read_only=True) as ipcache,
        PolicyMap(bpffs_root, read_only=True) as pmap,
        PolicyCidrMap(bpffs_root, read_only=True) as cidr_map,
    ):
        src_ep = eps.datapath_lookup(src_ip)
        dst_ep = eps.datapath_lookup(dst_ip)
        checks = []
        if src_ep is not None:
            ident, prefix = ipcache_identity(ipcache, dst_ip)
            d = decide(pmap, cidr_map, src_ep, "egress", ident, dst_ip, proto, port)
            d["remote"] = {"ip": dst_ip, "identity": ident, "ipcachePrefix": prefix}
            checks.append(d)
        if dst_ep is not None:
            ident = src_ep.identity if src_ep is not None else ipcache_identity(ipcache, src_ip)[0]
            d = decide(pmap, cidr_map, dst_ep, "ingress", ident, src_ip, proto, port)
            d["remote"] = {"ip": src_ip, "identity": ident}
            checks.append(d)
    verdict = "ALLOWED"
    for c in checks:
        if c["verdict"] == "DENIED":
            verdict = "DENIED"
            break
    return {
        "from": src_ip,
        "to": dst_ip,
        "protocol": proto,
        "port": port,
        "verdict": verdict,
        "checks": checks,
        "note": ""
        if checks
        else "neither address is an endpoint of this node: nothing decides here",
    }
