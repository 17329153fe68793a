"""Pods on one node: connectivity, DEL, CHECK, repeated ADD, parallel ADDs, CLI."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from pathlib import Path

import pytest
from porinlab import VENV_BIN, Netns, wait_for

TCP_ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = c.recv(1024)
    c.sendall(b"echo:" + data); c.close()
"""

TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"ping"); print(c.recv(1024).decode())
"""


def tcp_echo(server_pod, client_pod, port: int = 7000) -> str:
    srv = server_pod.popen(
        ["python3", "-c", TCP_ECHO_SERVER, server_pod.ip, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        out = client_pod.exec(["python3", "-c", TCP_CLIENT, server_pod.ip, str(port)])
        return out.stdout.strip()
    finally:
        srv.kill()
        srv.wait()


@pytest.fixture(scope="module")
def three_pods(node):
    return [node.add_pod() for _ in range(3)]


def test_pods_get_distinct_addresses_from_pod_cidr(three_pods):
    ips = [p.ip for p in three_pods]
    assert len(set(ips)) == 3
    assert all(ip.startswith("10.244.0.") and ip != "10.244.0.1" for ip in ips)
    for p in three_pods:
        r = p.result
        assert r["cniVersion"] == "1.0.0"
        assert r["ips"][0]["address"].endswith("/32")
        assert r["ips"][0]["gateway"] == "10.244.0.1"
        assert r["interfaces"][r["ips"][0]["interface"]]["sandbox"] == p.ns.path
        assert {"dst": "0.0.0.0/0", "gw": "10.244.0.1"} in r["routes"]


def test_ping_between_all_pods(three_pods):
    for a in three_pods:
        for b in three_pods:
            if a is not b:
                assert a.ping(b.ip), f"{a.ip} cannot reach {b.ip}"


def test_tcp_between_pods(three_pods):
    assert tcp_echo(three_pods[0], three_pods[1]) == "echo:ping"
    assert tcp_echo(three_pods[2], three_pods[0], port=7001) == "echo:ping"


def test_pod_to_node_and_node_to_pod(node, three_pods):
    pod = three_pods[0]
    assert pod.ping("10.244.0.1")
    assert node.ns.exec(["ping", "-c", "1", "-W", "2", pod.ip], check=False).returncode == 0


def test_pod_traffic_is_switched_by_bpf(node, three_pods):
    def forwarded() -> int:
        return sum(
            m["packets"]
            for m in node.porin_json("metrics", "list")
            if m["reason"] == "forwarded to a local endpoint" and m["direction"] == "egress"
        )

    before = forwarded()
    assert three_pods[0].ping(three_pods[1].ip, count=3)
    # 3 requests and 3 replies cross from_container on the two veths
    assert forwarded() >= before + 6


def test_gateway_arp_answered_by_datapath(node, three_pods):
    pod = three_pods[1]
    pod.exec(["ip", "neigh", "flush", "dev", "eth0"])
    assert pod.ping("10.244.0.1")
    neigh = pod.exec(["ip", "neigh", "show", "10.244.0.1"]).stdout
    lxc = pod.result["interfaces"][0]
    assert lxc["mac"] in neigh
    # nobody added a static (PERMANENT) entry
    assert "PERMANENT" not in neigh


def test_repeated_add_returns_same_result(node, three_pods):
    pod = three_pods[0]
    rc, again = node.cni("ADD", pod.container_id, pod.ns.path, pod.ifname)
    assert rc == 0
    assert again == pod.result


def test_check_passes_then_fails_without_route(node):
    pod = node.add_pod()
    conf = node.netconf(prevResult=pod.result)
    rc, out = node.cni("CHECK", pod.container_id, pod.ns.path, conf=conf)
    assert (rc, out) == (0, None)
    pod.exec(["ip", "route", "del", "default"])
    rc, out = node.cni("CHECK", pod.container_id, pod.ns.path, conf=conf)
    assert rc != 0
    assert out["code"] == 105
    assert "default route" in out["msg"]
    node.del_pod(pod)


def test_check_detects_missing_map_entry(node):
    pod = node.add_pod()
    conf = node.netconf(prevResult=pod.result)
    from porin.maps.endpoints import EndpointsMap

    with EndpointsMap(node.cfg.bpffs_root) as m:
        assert m.remove(pod.ip)
    rc, out = node.cni("CHECK", pod.container_id, pod.ns.path, conf=conf)
    assert rc != 0 and "endpoints map has no entry" in out["msg"]
    node.del_pod(pod)


def test_check_unknown_container(node):
    ns = Netns(kind="pod")
    try:
        conf = node.netconf(prevResult={"cniVersion": "1.0.0", "ips": []})
        rc, out = node.cni("CHECK", "nosuchcontainer", ns.path, conf=conf)
        assert rc != 0 and out["code"] == 3
    finally:
        ns.close()


def test_del_leaves_nothing_behind(node, snapshot, settled):
    before = snapshot(node)
    pod = node.add_pod()
    during = snapshot(node)
    assert len(during.links) == len(before.links) + 1
    assert pod.ip in during.ipam and pod.ip in during.map
    rc, out = node.del_pod(pod)
    assert (rc, out) == (0, None)
    settled(node, before)


def test_del_is_idempotent_and_survives_missing_netns(node, snapshot, settled):
    before = snapshot(node)
    pod = node.add_pod()
    pod.ns.close()  # runtime removed the netns first: the veth goes with it
    for _ in range(2):
        rc, out = node.cni("DEL", pod.container_id, pod.ns.path, pod.ifname)
        assert (rc, out) == (0, None)
    rc, _ = node.cni("DEL", pod.container_id, "", pod.ifname)  # CNI_NETNS may be empty
    assert rc == 0
    node.pods = {k: v for k, v in node.pods.items() if v is not pod}
    settled(node, before)


def test_del_of_unknown_container_succeeds(node):
    rc, out = node.cni("DEL", "neverexisted", "/var/run/netns/neverexisted", "eth0")
    assert (rc, out) == (0, None)


def test_twenty_parallel_adds_get_distinct_addresses(node, snapshot, settled):
    before = snapshot(node)
    nss = [Netns(kind="pod") for _ in range(20)]
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(
                pool.map(lambda ns: node.cni("ADD", f"par-{ns.name}", ns.path, "eth0"), nss)
            )
        assert all(rc == 0 for rc, _ in results), [r for r in results if r[0] != 0]
        ips = [r["ips"][0]["address"] for _, r in results]
        assert len(set(ips)) == 20
        for ns, (_, r) in zip(nss, results, strict=True):
            addr = ns.exec(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
            assert r["ips"][0]["address"] in addr
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            dels = list(
                pool.map(lambda ns: node.cni("DEL", f"par-{ns.name}", ns.path, "eth0"), nss)
            )
        assert all(rc == 0 for rc, _ in dels)
        settled(node, before)
    finally:
        for ns in nss:
            ns.close()


def test_cli_lists_endpoints_and_maps(node, three_pods):
    eps = node.porin_json("endpoint", "list")
    by_cid = {e["containerID"]: e for e in eps}
    for p in three_pods:
        ep = by_cid[p.container_id]
        assert ep["ipv4"] == f"{p.ip}/32" and ep["state"] == "ready"
        got = node.porin_json("endpoint", "get", str(ep["id"]))
        assert got == ep
    raw = {e["ip"]: e for e in node.porin_json("bpf", "endpoint", "list")}
    for p in three_pods:
        assert raw[p.ip]["mac"] == p.result["interfaces"][1]["mac"]
        assert raw[p.ip]["node_mac"] == p.result["interfaces"][0]["mac"]
    table = node.porin("endpoint", "list").stdout
    assert "CONTAINER ID" in table and three_pods[0].ip in table
    st = node.porin_json("status")
    assert st["endpoints"]["ready"] >= 3 and st["podCIDR"] == "10.244.0.0/24"


def test_cli_reports_unreachable_agent(node):
    r = subprocess.run(
        [str(VENV_BIN / "porin"), "--socket", "/nonexistent/porin.sock", "endpoint", "list"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "cannot reach porin-agent" in r.stderr
    r = node.porin("endpoint", "get", "65000", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_status_verb(node):
    conf = node.netconf(cniVersion="1.1.0")
    assert node.cni("STATUS", conf=conf) == (0, None)
    conf["agentSocket"] = "/nonexistent/porin.sock"
    rc, out = node.cni("STATUS", conf=conf)
    assert rc != 0 and out["code"] == 50


def test_gc_removes_attachments_not_listed(node, snapshot, settled):
    before = snapshot(node)
    keep, drop = node.add_pod(), node.add_pod()
    valid = [
        {"containerID": p.container_id, "ifname": p.ifname}
        for p in node.pods.values()
        if p is not drop
    ]
    conf = node.netconf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid})
    assert node.cni("GC", conf=conf) == (0, None)
    assert drop.container_id not in {e["containerID"] for e in node.porin_json("endpoint", "list")}
    assert keep.ping("10.244.0.1")
    node.del_pod(keep)
    drop.ns.close()
    node.pods = {k: v for k, v in node.pods.items() if v is not drop}
    settled(node, before)


def test_api_rejects_bad_requests_without_change(node, snapshot, settled):
    from porin.client import AgentClient, ApiError

    before = snapshot(node)
    c = AgentClient(node.cfg.socket)
    for method, path, body, status in (
        ("PUT", "/v1/endpoints", {"containerID": "x"}, 400),
        ("PUT", "/v1/endpoints", ["not", "an", "object"], 400),
        ("PUT", "/v1/endpoints", {"containerID": "x", "ifname": "eth0", "netns": "rel"}, 400),
        ("DELETE", "/v1/endpoints?containerID=&ifname=eth0", None, 400),
        ("GET", "/v1/endpoints/99999", None, 404),
        ("GET", "/v1/nothing", None, 404),
        ("POST", "/v1/status", None, 405),
        ("POST", "/v1/gc", {"network": "porin"}, 400),
    ):
        with pytest.raises(ApiError) as e:
            c.request(method, path, body)
        assert e.value.status == status, (method, path, e.value.message)
    settled(node, before)


def test_host_local_ipam_delegation(node, snapshot, settled, tmp_path):
    before = snapshot(node)
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]],
        "dataDir": str(tmp_path / "host-local"),
    }
    a = node.add_pod(ipam=ipam, dns={"nameservers": ["10.99.0.53"]})
    b = node.add_pod()
    assert a.ip.startswith("10.99.0.")
    assert a.result["ips"][0]["address"] == f"{a.ip}/32"
    assert a.result["dns"] == {"nameservers": ["10.99.0.53"]}
    assert a.ping(b.ip) and b.ping(a.ip)
    owned = tmp_path / "host-local" / "porin" / a.ip
    assert owned.exists()
    rc, _ = node.cni("DEL", a.container_id, a.ns.path, conf=node.netconf(ipam=ipam))
    assert rc == 0
    assert not owned.exists(), "host-local allocation not released"
    a.ns.close()
    node.pods = {k: v for k, v in node.pods.items() if v is not a}
    node.del_pod(b)
    settled(node, before)


def test_chained_tuning_plugin(node, snapshot, settled):
    """A conflist [porin, tuning]: the runtime passes porin's result to tuning as prevResult."""
    before = snapshot(node)
    ns = Netns(kind="pod")
    cid = f"chain-{ns.name}"
    try:
        rc, result = node.cni("ADD", cid, ns.path)
        assert rc == 0
        tuning = {
            "cniVersion": "1.0.0",
            "name": "porin",
            "type": "tuning",
            "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
            "prevResult": result,
        }
        proc = subprocess.run(
            ["nsenter", f"--net={node.ns.path}", "/usr/lib/cni/tuning"],
            input=json.dumps(tuning).encode(),
            env={
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": cid,
                "CNI_NETNS": ns.path,
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
            },
            capture_output=True,
        )
        assert proc.returncode == 0, proc.stdout
        chained = json.loads(proc.stdout)
        assert chained["ips"] == result["ips"]
        val = ns.exec(["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]).stdout.strip()
        assert val == "1"
        # the chain's final result still works as CHECK's prevResult
        rc, out = node.cni("CHECK", cid, ns.path, conf=node.netconf(prevResult=chained))
        assert (rc, out) == (0, None)
        assert node.cni("DEL", cid, ns.path) == (0, None)
        settled(node, before)
    finally:
        ns.close()


def test_older_cni_versions(node):
    for version in ("0.3.1", "0.4.0", "1.1.0"):
        pod = node.add_pod(cniVersion=version)
        assert pod.result["cniVersion"] == version
        assert ("version" in pod.result["ips"][0]) == (version < "1.0.0")
        if version == "1.1.0":
            assert pod.result["interfaces"][1]["mtu"] == 1500
        node.del_pod(pod)


def test_mtu_from_netconf(node):
    pod = node.add_pod(mtu=1400)
    out = pod.exec(["ip", "-o", "link", "show", "eth0"]).stdout
    assert "mtu 1400" in out
    host = node.ns.exec(["ip", "-o", "link", "show", pod.result["interfaces"][0]["name"]]).stdout
    assert "mtu 1400" in host
    node.del_pod(pod)


def test_labels_from_cni_args(node):
    ns = Netns(kind="pod")
    try:
        rc, _ = node.cni(
            "ADD",
            f"lbl-{ns.name}",
            ns.path,
            env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"},
        )
        assert rc == 0
        ep = next(
            e for e in node.porin_json("endpoint", "list") if e["containerID"] == f"lbl-{ns.name}"
        )
        assert ep["labels"]["k8s:io.kubernetes.pod.namespace"] == "shop"
        assert ep["labels"]["k8s:io.kubernetes.pod.name"] == "cart-1"
        assert node.cni("DEL", f"lbl-{ns.name}", ns.path) == (0, None)
    finally:
        ns.close()


def test_state_files_persisted(node, three_pods):
    files = list(Path(node.cfg.state_dir, "endpoints").glob("*.json"))
    assert len(files) >= 3
    wait_for(lambda: Path(node.cfg.state_dir, "ipam.json").exists(), 2, "ipam state")


def start_monitor(node, *args: str) -> subprocess.Popen:
    """`porin monitor ARGS` in the node, once it listens."""
    mon = node.ns.popen(
        [str(VENV_BIN / "porin"), "monitor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=node.env,
    )
    line = mon.stderr.readline()
    if "Listening for" not in line:
        mon.kill()
        mon.wait()
        raise AssertionError(f"porin monitor did not start: {line}{mon.stderr.read()}")
    return mon


def test_monitor_reports_a_spoofed_packet_and_cleans_up(node, three_pods):
    from porin.maps.monitor_config import MonitorConfigMap, lock_path

    pod, other = three_pods[0], three_pods[1]
    mon = start_monitor(
        node, "-o", "json", "--count", "1", "--duration", "30", "--ip", "10.244.0.250"
    )
    try:
        # one monitor per node: a second one is turned away
        second = node.porin("monitor", "--duration", "1", check=False)
        assert second.returncode == 1 and "another porin monitor" in second.stderr
        # the pod sends from an address that is not its own
        pod.exec(["ip", "addr", "add", "10.244.0.250/32", "dev", "eth0"])
        pod.exec(["ping", "-c", "1", "-W", "1", "-I", "10.244.0.250", other.ip], check=False)
        out, err = mon.communicate(timeout=30)
    finally:
        pod.exec(["ip", "addr", "del", "10.244.0.250/32", "dev", "eth0"], check=False)
        if mon.poll() is None:
            mon.kill()
            mon.wait()
    assert mon.returncode == 0, err
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["type"] == "drop"
    assert event["reason"] in ("ARP_SPOOFED", "INVALID_SIP")
    assert event["interface"].startswith("lxc") and event["direction"] == "egress"
    assert event["packet"]["src"] == "10.244.0.250"
    with MonitorConfigMap(node.cfg.bpffs_root) as cfg:
        assert cfg.flags() == 0  # nobody listens: the datapath reports nothing
    assert not os.path.exists(lock_path(node.cfg.bpffs_root))  # nothing left in /run


def test_a_killed_monitor_does_not_leave_events_on(node):
    """SIGKILL gives the monitor no chance to switch the datapath's events off:
    the agent notices that nobody holds the monitor lock and does it."""
    import signal

    from porin.daemon.monitor_watch import MonitorWatch
    from porin.maps.monitor_config import MonitorConfigMap, lock_path

    mon = start_monitor(node, "--type", "trace", "--duration", "60")
    try:
        with MonitorConfigMap(node.cfg.bpffs_root) as cfg:
            assert cfg.flags() == 3
            # the agent's check leaves a running monitor alone
            assert MonitorWatch(node.cfg.bpffs_root).check_once() is False
            assert cfg.flags() == 3
            mon.send_signal(signal.SIGKILL)
            mon.wait()
            assert wait_for(lambda: cfg.flags() == 0, timeout=10)
        assert not os.path.exists(lock_path(node.cfg.bpffs_root))
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()


SEND_RA = """
import sys
from scapy.all import Ether, IPv6, ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr
from scapy.all import ICMPv6ND_NA, ICMPv6ND_Redirect, get_if_hwaddr, sendp
mac = get_if_hwaddr("eth0")
ll = "fe80::bad:1"
frames = [
    # the attack reported: the pod offers a prefix and itself as the node's router
    Ether(src=mac, dst="33:33:00:00:00:01")
    / IPv6(src=ll, dst="ff02::1", hlim=255)
    / ICMPv6ND_RA(routerlifetime=1800, prf=1)
    / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64, L=1, A=1)
    / ICMPv6NDOptSrcLLAddr(lladdr=mac),
    # and claims the node's router and redirects it
    Ether(src=mac, dst="33:33:00:00:00:01")
    / IPv6(src=ll, dst="ff02::1", hlim=255)
    / ICMPv6ND_NA(tgt="fe80::1", R=1, O=1),
    Ether(src=mac, dst="33:33:00:00:00:01")
    / IPv6(src=ll, dst="ff02::1", hlim=255)
    / ICMPv6ND_Redirect(tgt=ll, dst="2001:db8::1"),
]
sendp(frames, iface="eth0", verbose=False)
"""


def ndp_drops(node) -> int:
    return sum(
        m["packets"]
        for m in node.porin_json("metrics", "list")
        if m["reasonName"] == "IPV6_NDP" and m["direction"] == "egress"
    )


def test_pod_router_advertisement_does_not_reach_node(node):
    pod = node.add_pod()
    lxc = pod.result["interfaces"][0]["name"]
    before = ndp_drops(node)
    pod.exec([str(VENV_BIN / "python"), "-c", SEND_RA])
    wait_for(lambda: ndp_drops(node) >= before + 3, timeout=10, what="NDP drops counted")
    # the node took no address, route or router from the pod, and its side of
    # the veth has no IPv6 at all, so even without the programs the stack drops it
    addrs = node.ns.exec(["ip", "-6", "-o", "addr", "show"]).stdout
    assert "2001:db8:bad" not in addrs and lxc not in addrs
    routes = node.ns.exec(["ip", "-6", "route", "show", "table", "all"]).stdout
    assert "2001:db8:bad" not in routes and "default" not in routes
    neigh = node.ns.exec(["ip", "-6", "neigh", "show"]).stdout
    assert "fe80::1" not in neigh
    settings = {
        key: Path(f"/proc/sys/net/ipv6/conf/{lxc}/{key}")
        for key in ("disable_ipv6", "accept_ra", "forwarding")
    }
    values = node.ns.exec(["cat", *(str(p) for p in settings.values())]).stdout.split()
    assert values == ["1", "0", "0"]
    node.del_pod(pod)


def test_check_reports_ipv6_reopened_on_host_veth(node):
    pod = node.add_pod()
    lxc = pod.result["interfaces"][0]["name"]
    conf = node.netconf(prevResult=pod.result)
    node.ns.exec(["sysctl", "-qw", f"net.ipv6.conf.{lxc}.disable_ipv6=0"])
    rc, out = node.cni("CHECK", pod.container_id, pod.ns.path, conf=conf)
    assert rc != 0 and out["code"] == 105
    assert f"net.ipv6.conf.{lxc}.disable_ipv6 is 0, expected 1" in out["msg"]
    node.del_pod(pod)
