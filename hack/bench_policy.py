#!/usr/bin/env python3
"""Network policy: what it costs per packet, per connection and per change.

1. BPF_PROG_TEST_RUN through the real from_container (private bpffs root):
   an established pod-to-pod packet whose receiver a policy selects (the
   verdict cached in its conntrack entry) against the same packet with no
   policy at all; and a new connection's full decision (three LPM lookups)
   against the same SYN unpoliced. The variants take turns in stretches on
   one CPU; medians. Target: established +5 ns at most.
2. New connections/s between two pods of a real Porin node (agent, CNI
   plugin) with 1, 100 and 1,000 rules selecting the destination, against no
   policy (target >= 0.95x), and against the same rules as kube-router or
   Calico's iptables mode would build them (a per-pod chain, one rule per
   policy rule matching an ipset of allowed sources and the port, ESTABLISHED
   accepted first) between two plain namespaces routed by a third, the
   client's allowing rule last (target: Porin >= 1.2x at 1,000 rules).
   Client and server pinned to one CPU, variants interleaved per round,
   medians of same-round ratios.
3. The control plane in process, on real pinned maps: 1,000 policies over
   1,000 endpoints applied at once (target < 2 s to enforced), then one of
   them changed (target < 100 ms), and the process's memory for it.

    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_policy.py [--quick]

Exit status: 0 every target met, 1 a target missed or a problem seen.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Lab, fmt_table, in_ns, median, quietly, record, tune_client  # noqa: E402
from porinlab import Node, run  # noqa: E402

CPU = "1"
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
CLIENT = ("10.244.0.10", "02:00:00:00:00:0a", "02:aa:00:00:00:0a")
SERVER = ("10.244.0.11", "02:00:00:00:00:0b", "02:aa:00:00:00:0b")
SERVER_PORT = 8080
ID_CLIENT, ID_SERVER = 300, 301


def tcp_frame(
    src: tuple[str, str, str], dst: tuple[str, str, str], sport: int, dport: int, flags: int
) -> bytes:
    eth = (
        bytes.fromhex(src[2].replace(":", ""))
        + bytes.fromhex(src[1].replace(":", ""))
        + b"\x08\x00"
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        1,
        0,
        64,
        6,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    csum = 0
    for i in range(0, 20, 2):
        csum += (ip[i] << 8) | ip[i + 1]
    csum = (csum & 0xFFFF) + (csum >> 16)
    ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
    return eth + ip + tcp


# ---------------------------------------------------------------- 1. per packet


def bpf_costs(samples: int) -> dict[str, float]:
    from porin.daemon.config import AgentConfig
    from porin.daemon.datapath import compile_programs
    from porin.maps import syscall
    from porin.maps.conntrack_tables import Conntrack
    from porin.maps.endpoints import ENDPOINT_F_POLICY_INGRESS, EndpointEntry, EndpointsMap
    from porin.maps.ipcache import IpcacheEntry, IpcacheMap
    from porin.maps.policy import PolicyMap, PolicyMapKey
    from porin.maps.policy_cidr import PolicyCidrMap

    root = f"/sys/fs/bpf/plbench-{uuid.uuid4().hex[:8]}"
    affinity = os.sched_getaffinity(0)
    module = None
    try:
        module, progs = compile_programs(
            "bpf_lxc.c", AgentConfig(bpffs_root=root), ["from_container"]
        )
        fd = progs["from_container"].fd
        eps, ct, pmap = EndpointsMap(root), Conntrack(root), PolicyMap(root)
        ipcache, cidr = IpcacheMap(root), PolicyCidrMap(root)
        ipcache.upsert(IpcacheEntry(f"{CLIENT[0]}/32", ID_CLIENT, ""))
        ipcache.upsert(IpcacheEntry(f"{SERVER[0]}/32", ID_SERVER, ""))
        cidr.write("10.0.0.0/8", 1 << 24)  # a CIDR rule exists: the third lookup is made

        def server(policy: bool, rev: int) -> None:
            eps.upsert(EndpointEntry(CLIENT[0], 1, 10, CLIENT[1], CLIENT[2], ID_CLIENT))
            eps.upsert(
                EndpointEntry(
                    SERVER[0],
                    77,
                    11,
                    SERVER[1],
                    SERVER[2],
                    ID_SERVER,
                    ENDPOINT_F_POLICY_INGRESS if policy else 0,
                    rev,
                )
            )

        # the policy: 100 rules selecting the server, the client's among them
        for i in range(100):
            pmap.write(PolicyMapKey(11, "ingress", 1000 + i, 6, SERVER_PORT, 16), 10 + i, False)
        pmap.write(PolicyMapKey(11, "ingress", ID_CLIENT, 6, SERVER_PORT, 16), 5, False)

        def frame(sport: int, flags: int) -> bytes:
            return tcp_frame(CLIENT, SERVER, sport, SERVER_PORT, flags)

        # established flows: one decided under policy (revision 9), one never policed
        server(True, 9)
        for f in (0x02, 0x10):
            assert syscall.prog_test_run(fd, frame(41000, f))[0] == TC_ACT_REDIRECT
        server(False, 0)
        for f in (0x02, 0x10):
            assert syscall.prog_test_run(fd, frame(42000, f))[0] == TC_ACT_REDIRECT
        os.sched_setaffinity(0, {int(CPU)})
        durations: dict[str, list[int]] = {
            "est-policy": [],
            "est-none": [],
            "syn-policy": [],
            "syn-none": [],
        }
        stretch = 200
        for round_ in range(max(1, samples // stretch)):
            for name in durations:
                policy = name.endswith("policy")
                server(policy, 9 if policy else 0)
                for i in range(stretch):
                    if name.startswith("est"):
                        pkt = frame(41000 if policy else 42000, 0x10)
                    else:  # a fresh tuple every run: a new connection each time
                        ct.flush() if i == 0 else None
                        pkt = frame(10000 + (round_ * stretch + i) % 50000, 0x02)
                    r, _, d = syscall.prog_test_run(fd, pkt)
                    if r != TC_ACT_REDIRECT:
                        raise RuntimeError(f"{name}: from_container returned {r}")
                    durations[name].append(d)
            # the established entries again (the SYN stretches flushed the table)
            ct.flush()
            server(True, 9)
            for f in (0x02, 0x10):
                syscall.prog_test_run(fd, frame(41000, f))
            server(False, 0)
            for f in (0x02, 0x10):
                syscall.prog_test_run(fd, frame(42000, f))
        return {k: float(statistics.median(v)) for k, v in durations.items()}
    finally:
        os.sched_setaffinity(0, affinity)
        if module is not None:
            quietly(module.cleanup)  # type: ignore[attr-defined]
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- 3. control plane


def control_plane(n: int) -> dict[str, float]:
    from porin.daemon.config import AgentConfig
    from porin.daemon.datapath import compile_programs
    from porin.daemon.kvstore import LocalStore
    from porin.daemon.policy import PolicyManager
    from porin.maps.endpoints import EndpointEntry, EndpointsMap
    from porin.models import Endpoint

    root = f"/sys/fs/bpf/plbench-{uuid.uuid4().hex[:8]}"
    state = tempfile.mkdtemp(prefix="plbench-")
    module = None
    try:
        module, _ = compile_programs("bpf_lxc.c", AgentConfig(bpffs_root=root), ["from_container"])
        eps_map = EndpointsMap(root)
        eps = []
        for i in range(n):
            ip = f"10.{40 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
            ep = Endpoint(
                id=i + 1,
                container_id=f"c{i}",
                ifname="eth0",
                netns="/x",
                network="porin",
                ipv4=f"{ip}/32",
                gateway="10.40.0.1",
                mtu=1500,
                host_ifname=f"lxc{i}",
                state="ready",
                mac="02:00:00:00:00:01",
                host_mac="02:00:00:00:00:02",
                host_ifindex=1000 + i,
                identity=256 + i,
                labels={"k8s:io.kubernetes.pod.namespace": "bench", "app": f"svc-{i}"},
            )
            eps.append(ep)
        idents = [
            {
                "id": e.identity,
                "labels": {"io.kubernetes.pod.namespace": "bench", "app": e.labels["app"]},
            }
            for e in eps
        ]
        by_id = {e.id: e for e in eps}
        pm: PolicyManager

        def refresh(ids: list[int]) -> None:
            for i in ids:
                e = by_id[i]
                st = pm.state_for(e) or (0, 0)
                eps_map.upsert(
                    EndpointEntry(
                        e.ip, e.host_ifindex, e.id, e.mac, e.host_mac, e.identity, st[0], st[1]
                    )
                )

        pm = PolicyManager(
            state,
            root,
            per_endpoint_limit=16384,
            total_limit=262144,
            cidr_limit=16384,
            local_endpoints=lambda: eps,
            identities=lambda: idents,
            remote_ports=lambda: {},
            refresh_endpoints=refresh,
        )
        pm.start(LocalStore(os.path.join(state, "kv.json")))

        def doc(i: int, port: int) -> dict[str, Any]:
            return {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"p{i}", "namespace": "bench"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": f"svc-{i}"}},
                    "ingress": [
                        {
                            "from": [
                                {"podSelector": {"matchLabels": {"app": f"svc-{(i + 1) % n}"}}}
                            ],
                            "ports": [{"port": port}, {"port": 9000, "endPort": 9100}],
                        }
                    ],
                },
            }

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.monotonic()
        pm.apply([doc(i, 8080) for i in range(n)], "bench")
        apply_s = time.monotonic() - t
        entries = len(pm.map.entries())
        t = time.monotonic()
        pm.apply([doc(n // 2, 8443)], "bench")
        change_s = time.monotonic() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pm.stop()
        return {
            "apply_s": apply_s,
            "change_s": change_s,
            "entries": float(entries),
            "rss_mib": rss / 1024,
            "rss_delta_mib": (rss - rss0) / 1024,
        }
    finally:
        if module is not None:
            quietly(module.cleanup)  # type: ignore[attr-defined]
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def agent_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def agent_scale(n: int) -> dict[str, float]:
    """A real agent with n pods (CNI ADD) and n policies applied with `porin apply`:
    the time to enforced and the agent's memory."""
    import json

    node = Node(pod_cidr="10.248.0.0/20")
    work = tempfile.mkdtemp(prefix="plbench-")
    try:
        node.start_agent()
        assert node.proc is not None
        for i in range(n):
            node.add_pod(f"p{i}", namespace="bench", labels={"app": f"svc-{i}"})
        rss_pods = agent_rss_mib(node.proc.pid)
        docs = []
        for i in range(n):
            docs.append(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                f"metadata: {{name: p{i}, namespace: bench}}\nspec:\n"
                f"  podSelector: {{matchLabels: {{app: svc-{i}}}}}\n"
                "  ingress:\n"
                f"  - from: [{{podSelector: {{matchLabels: {{app: svc-{(i + 1) % n}}}}}}}]\n"
                "    ports: [{port: 8080}, {port: 9000, endPort: 9100}]\n"
            )
        path = os.path.join(work, "all.yaml")
        Path(path).write_text("---\n".join(docs))
        t = time.monotonic()
        res = node.porin_json("apply", "-f", path)
        apply_s = time.monotonic() - t  # the CLI returns once every entry is written
        apply_agent_s = res["enforcedMs"] / 1000
        st = node.porin_json("status")["policy"]
        one = os.path.join(work, "one.yaml")
        Path(one).write_text(docs[n // 2].replace("port: 8080", "port: 8443"))
        t = time.monotonic()
        res = node.porin_json("apply", "-f", one)
        change_s = time.monotonic() - t
        return {
            "apply_s": apply_s,
            "apply_agent_s": apply_agent_s,
            "change_s": change_s,
            "change_agent_s": res["enforcedMs"] / 1000,
            "entries": float(st["entries"]),
            "enforced": float(st["endpointsEnforced"]),
            "rss_pods_mib": rss_pods,
            "rss_mib": agent_rss_mib(node.proc.pid),
            "listed": float(len(json.loads(node.porin("policy", "list", "-o", "json").stdout))),
        }
    finally:
        node.close()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- 2. new connections/s


def crr_rate(crr: str, ns: Any, ip: str, port: int, seconds: float) -> float:
    import json

    out = run(
        in_ns(ns, ["taskset", "-c", CPU, crr, "client", ip, str(port), str(seconds)]),
        timeout=seconds + 60,
    )
    res = json.loads(out.stdout)
    return res["ok"] / max(res["seconds"], 1e-9)


def rules_yaml(n: int, port: int) -> str:
    """n rules selecting the server; the last one allows the client."""
    docs = []
    for i in range(n):
        who = "client" if i == n - 1 else f"other-{i}"
        docs.append(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: r{i}, namespace: default}}\nspec:\n"
            "  podSelector: {matchLabels: {app: server}}\n"
            f"  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {who}}}}}}}]\n"
            f"    ports: [{{port: {port}}}]\n"
        )
    return "---\n".join(docs)


def iptables_rules(n: int, client_ip: str, server_ip: str, port: int) -> str:
    """kube-router's shape: FORWARD -> the pod's chain; ESTABLISHED first; a rule per
    policy rule matching an ipset of its sources; the rest dropped."""
    lines = ["*filter", ":POD-FW - [0:0]", f"-A FORWARD -d {server_ip}/32 -j POD-FW"]
    lines.append("-A POD-FW -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    for i in range(n):
        lines.append(f"-A POD-FW -p tcp --dport {port} -m set --match-set np-src-{i} src -j ACCEPT")
    lines.append("-A POD-FW -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def conn_rates(rounds: int, seconds: float, counts: list[int]) -> dict[str, list[float]]:
    from bench_host import build_crr

    lab = Lab()
    work = tempfile.mkdtemp(prefix="plbench-")
    rates: dict[str, list[float]] = {}
    try:
        crr = build_crr(work)
        node = Node(pod_cidr="10.246.0.0/24")
        lab.on_close(node.close)
        node.start_agent()
        client = node.add_pod("client", namespace="default", labels={"app": "client"})
        server = node.add_pod("server", namespace="default", labels={"app": "server"})
        tune_client(client.ns)  # TIME_WAIT ports reused: connect() does not search
        srv = lab.spawn(in_ns(server.ns, ["taskset", "-c", CPU, crr, "server", str(SERVER_PORT)]))
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"

        # the iptables/ipset baseline: client -- router -- server, plain veths
        r = lab.netns("iptr")
        c = lab.netns("iptc")
        s = lab.netns("ipts")
        for ns, peer, addr, raddr in (
            (c, "c", "10.247.1.2", "10.247.1.1"),
            (s, "s", "10.247.2.2", "10.247.2.1"),
        ):
            run(
                [
                    "ip",
                    "link",
                    "add",
                    f"v{peer}",
                    "netns",
                    r.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns.name,
                ]
            )
            run(in_ns(ns, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"]))
            run(in_ns(ns, ["ip", "link", "set", "eth0", "up"]))
            run(in_ns(ns, ["ip", "link", "set", "lo", "up"]))
            run(in_ns(ns, ["ip", "route", "add", "default", "via", raddr]))
            run(in_ns(r, ["ip", "addr", "add", f"{raddr}/24", "dev", f"v{peer}"]))
            run(in_ns(r, ["ip", "link", "set", f"v{peer}", "up"]))
        run(in_ns(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        tune_client(c)
        run(
            in_ns(r, ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=10"]),
            check=False,
        )
        isrv = lab.spawn(in_ns(s, ["taskset", "-c", CPU, crr, "server", str(SERVER_PORT)]))
        assert isrv.stdout is not None and isrv.stdout.readline().strip() == "ready"

        def set_porin(n: int) -> None:
            node.porin("policy", "delete", "--all")
            if n:
                path = os.path.join(work, f"rules-{n}.yaml")
                Path(path).write_text(rules_yaml(n, SERVER_PORT))
                node.porin("apply", "-f", path)
                # enforced: the server is isolated and the client's is the rule that allows
                res = node.porin_json(
                    "policy",
                    "explain",
                    "--from",
                    client.ip,
                    "--to",
                    server.ip,
                    "--port",
                    f"{SERVER_PORT}/tcp",
                )
                (ingress,) = [c for c in res["checks"] if c["direction"] == "ingress"]
                if not ingress["enforced"] or res["verdict"] != "ALLOWED":
                    raise RuntimeError(f"{n} rules: not enforced as meant: {ingress}")

        def set_ipt(n: int) -> None:
            run(in_ns(r, ["iptables", "-F", "FORWARD"]), check=False)
            run(in_ns(r, ["iptables", "-F", "POD-FW"]), check=False)
            run(in_ns(r, ["iptables", "-X", "POD-FW"]), check=False)
            sets = []
            for i in range(n):
                src = "10.247.1.2" if i == n - 1 else f"10.250.{i // 250}.{i % 250 + 1}"
                sets += [
                    f"create np-src-{i} hash:ip -exist",
                    f"flush np-src-{i}",
                    f"add np-src-{i} {src}",
                ]
            run(in_ns(r, ["ipset", "restore"]), input="\n".join(sets) + "\n")
            rules = iptables_rules(n, "10.247.1.2", "10.247.2.2", SERVER_PORT)
            run(in_ns(r, ["iptables-restore", "--noflush"]), input=rules)

        for _ in range(rounds):
            for n in [0, *counts]:
                set_porin(n)
                # enforced: a client that no rule allows is refused
                rates.setdefault(f"porin-{n}", []).append(
                    crr_rate(crr, client.ns, server.ip, SERVER_PORT, seconds)
                )
            for n in counts[-1:]:
                set_ipt(n)
                rates.setdefault(f"ipt-{n}", []).append(
                    crr_rate(crr, c, "10.247.2.2", SERVER_PORT, seconds)
                )
        return rates
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    ok = True
    rows = []

    costs = bpf_costs(2000 if args.quick else 20000)
    est = costs["est-policy"] - costs["est-none"]
    record("policy.established_delta_ns", est)
    rows.append(
        [
            "established packet, policy vs none",
            f"{costs['est-policy']:.0f} ns",
            f"{costs['est-none']:.0f} ns",
            f"{est:+.1f} ns / +5",
            "pass" if est <= 5 else "FAIL",
        ]
    )
    syn = costs["syn-policy"] - costs["syn-none"]
    rows.append(
        [
            "new connection's decision (SYN)",
            f"{costs['syn-policy']:.0f} ns",
            f"{costs['syn-none']:.0f} ns",
            f"{syn:+.1f} ns",
            "-",
        ]
    )
    ok &= est <= 5

    counts = [1, 100, 1000]
    rates = conn_rates(1 if args.quick else 3, 2.0 if args.quick else 5.0, counts)
    base = rates["porin-0"]
    for n in counts:
        ratio = median([a / b for a, b in zip(rates[f"porin-{n}"], base, strict=True)])
        record(f"policy.crr_ratio_{n}", ratio)
        good = ratio >= 0.95
        ok &= good
        rows.append(
            [
                f"new conn/s, {n} rules vs no policy",
                f"{median(rates[f'porin-{n}']):.0f}",
                f"{median(base):.0f}",
                f"{ratio:.2f}x / 0.95",
                "pass" if good else "FAIL",
            ]
        )
    n = counts[-1]
    ratio = median([a / b for a, b in zip(rates[f"porin-{n}"], rates[f"ipt-{n}"], strict=True)])
    record("policy.crr_vs_iptables", ratio)
    ok &= ratio >= 1.2
    rows.append(
        [
            f"new conn/s, {n} rules vs iptables+ipset",
            f"{median(rates[f'porin-{n}']):.0f}",
            f"{median(rates[f'ipt-{n}']):.0f}",
            f"{ratio:.2f}x / 1.2",
            "pass" if ratio >= 1.2 else "FAIL",
        ]
    )

    cp = control_plane(1000)
    record("policy.apply_1000_s", cp["apply_s"])
    record("policy.change_1_s", cp["change_s"])
    ok &= cp["apply_s"] < 2 and cp["change_s"] < 0.1
    rows.append(
        [
            "apply 1000 policies over 1000 endpoints",
            f"{cp['apply_s']:.2f} s",
            "-",
            "< 2 s",
            "pass" if cp["apply_s"] < 2 else "FAIL",
        ]
    )
    rows.append(
        [
            "change one of 1000 policies",
            f"{cp['change_s'] * 1000:.0f} ms",
            "-",
            "< 100 ms",
            "pass" if cp["change_s"] < 0.1 else "FAIL",
        ]
    )
    rows.append(
        [
            "policy entries / process RSS",
            f"{cp['entries']:.0f}",
            f"{cp['rss_mib']:.0f} MiB",
            f"+{cp['rss_delta_mib']:.0f} MiB",
            "-",
        ]
    )
    ag = agent_scale(100 if args.quick else 1000)
    record("policy.agent_apply_s", ag["apply_s"])
    record("policy.agent_rss_mib", ag["rss_mib"])
    ok &= ag["apply_s"] < 2 and ag["enforced"] == ag["listed"]
    rows.append(
        [
            f"agent: porin apply {ag['listed']:.0f} policies over as many pods",
            f"{ag['apply_s']:.2f} s",
            f"{ag['apply_agent_s']:.2f} s in agent",
            "< 2 s",
            "pass" if ag["apply_s"] < 2 else "FAIL",
        ]
    )
    good = ag["change_agent_s"] < 0.1
    ok &= good
    rows.append(
        [
            "agent: one changed policy, enforced (agent side)",
            f"{ag['change_agent_s'] * 1000:.0f} ms",
            f"{ag['change_s'] * 1000:.0f} ms CLI incl.",
            "< 100 ms",
            "pass" if good else "FAIL",
        ]
    )
    rows.append(
        [
            "agent RSS, with the pods / and the policies",
            f"{ag['rss_pods_mib']:.0f} MiB",
            f"{ag['rss_mib']:.0f} MiB",
            f"{ag['entries']:.0f} entries",
            "-",
        ]
    )
    print(fmt_table(["metric", "porin", "baseline", "ratio/target", "pass/fail"], rows, {1, 2}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
