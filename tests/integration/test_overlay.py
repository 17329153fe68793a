"""Several nodes sharing a real etcd: pods reach pods and services on every
node through the VXLAN or IPIP overlay; nodes come and go; etcd goes away."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time

import pytest
from porinlab import CONVERSATION, Etcd, Netns, Node, Underlay, start_agents, wait_for
from scapy.all import IP, UDP, rdpcap
from scapy.layers.vxlan import VXLAN

ETCD_IP = "198.18.0.2"
LEASE_TTL = 3

TCP_SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(64); print("ready", flush=True)
def serve(c):
    while True:
        d = c.recv(100)
        if not d: break
        c.sendall(sys.argv[1].encode() + b":" + d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

TCP_CLIENT = """
import socket, sys
for ip in sys.argv[1:]:
    c = socket.create_connection((ip, 7000), timeout=5); c.sendall(b"hi")
    print(c.recv(100).decode()); c.close()
"""

HTTP_CLIENT = """
import socket, sys
for _ in range(int(sys.argv[2])):
    c = socket.create_connection((sys.argv[1], 80), timeout=5); c.sendall(b"x")
    print(c.recv(100).decode().split(":")[0]); c.close()
"""


IDENTITY_GRACE = 3  # seconds: identities of deleted pods go within a test's patience


class Cluster:
    def __init__(self, tunnel: str, nodes: int = 3) -> None:
        self.tunnel = tunnel
        self.underlay = Underlay()
        self.etcd = Etcd(self.underlay, ETCD_IP)
        self.nodes: list[Node] = []
        self.procs: list[subprocess.Popen] = []

    def add_node(self, i: int, start: bool = True) -> Node:
        node = Node(
            pod_cidr=f"10.244.{i}.0/24",
            underlay=self.underlay,
            node_ip=f"198.18.0.{10 + i}",
            kvstore={"endpoints": [self.etcd.endpoint]},
            tunnel=self.tunnel,
            clusterCIDR="10.244.0.0/16",
            nodeLeaseTTL=LEASE_TTL,
            identityGCGracePeriod=IDENTITY_GRACE,
        )
        self.nodes.append(node)
        if start:
            node.start_agent()
        return node

    def serve(self, pod) -> None:
        p = pod.popen(["python3", "-c", TCP_SERVER, pod.ip], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        self.procs.append(p)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for n in self.nodes:
            n.close()
        self.etcd.close()
        self.underlay.close()


def ipcache(node: Node) -> dict[str, dict]:
    return {e["prefix"]: e for e in node.porin_json("bpf", "ipcache", "list")}


@pytest.fixture(scope="module", params=["vxlan", "ipip"])
def cluster(request):
    c = Cluster(request.param)
    try:
        c.etcd.start()
        for i in (1, 2, 3):
            c.add_node(i, start=False)
        start_agents(c.nodes)
        for n in c.nodes:
            for _ in range(2):
                pod = n.add_pod()
                c.serve(pod)
        all_ips = {p.ip for n in c.nodes for p in n.pods.values()}
        for n in c.nodes:
            wait_for(
                lambda n=n: all_ips <= {k.split("/")[0] for k in ipcache(n)},
                15,
                f"{n.ns.name} to learn every pod",
            )
        yield c
    finally:
        c.close()


def pods(c: Cluster) -> list:
    return [p for n in c.nodes[:3] for p in n.pods.values()]


def test_nodes_and_ipcache(cluster):
    c = cluster
    names = {n.ns.name for n in c.nodes[:3]}
    for n in c.nodes[:3]:
        listed = n.porin_json("node", "list")
        assert {x["name"] for x in listed} >= names
        assert all(x["health"] == "ok" for x in listed)
        st = n.porin_json("status")
        assert st["kvstore"]["state"] == "connected" and st["kvstore"]["nodes"] >= 3
        assert st["tunnel"]["mode"] == c.tunnel
        cache = ipcache(n)
        for other in c.nodes[:3]:
            if other is n:
                continue
            assert cache[f"{other.node_ip}/32"]["node"]
            assert cache[other.cfg.pod_cidr]["tunnel_endpoint"] == other.node_ip
            for p in other.pods.values():
                assert cache[f"{p.ip}/32"]["tunnel_endpoint"] == other.node_ip
        tunnels = n.porin_json("bpf", "tunnel", "list")
        assert tunnels["mode"] == c.tunnel and len(tunnels["entries"]) >= 6
    ids = c.nodes[0].porin_json("identity", "list")
    assert {1, 2, 6} <= {i["id"] for i in ids} and any(i["id"] >= 256 for i in ids)


def test_an_identity_is_shown_in_use_everywhere_and_released_everywhere_after_grace(cluster):
    c = cluster
    n1 = c.nodes[0]
    pod = n1.add_pod(namespace="gc", name="probe", labels={"app": f"gc-{c.tunnel}"})
    ident = _endpoint(n1, pod)["identity"]

    def row(n: Node) -> dict | None:
        return next((i for i in n.porin_json("identity", "list") if i["id"] == ident), None)

    for n in c.nodes[:3]:
        wait_for(lambda n=n: (row(n) or {}).get("nodes") == {n1.ns.name: 1}, 10, "usage seen")
    assert "gc-" + c.tunnel in n1.porin("identity", "list").stdout
    n1.del_pod(pod)
    for n in c.nodes[:3]:
        wait_for(lambda n=n: row(n) is None, IDENTITY_GRACE + 15, f"{n.ns.name} to drop {ident}")
    # the pods that stay keep theirs
    for n in c.nodes[:3]:
        for p in n.pods.values():
            mine = _endpoint(n, p)["identity"]
            assert any(
                i["id"] == mine and i["endpoints"] >= 1 for i in n1.porin_json("identity", "list")
            )


def _endpoint(node: Node, pod) -> dict:
    return next(
        e for e in node.porin_json("endpoint", "list") if e["containerID"] == pod.container_id
    )


def test_the_node_itself_reaches_every_remote_pod_through_the_overlay(cluster):
    """Host-network processes of a node reach pods of other nodes; the pods see
    the node's gateway address (its own in the overlay), their replies come back."""
    c = cluster
    n1 = c.nodes[0]
    gateway = n1.porin_json("status")["gateway"]
    for other in c.nodes[1:3]:
        for p in other.pods.values():
            assert n1.ns.exec(["ping", "-c", "1", "-W", "2", p.ip], check=False).returncode == 0
            answered = n1.ns.exec(["python3", "-c", TCP_CLIENT, p.ip]).stdout.split(":")
            assert answered[0] == p.ip
            # the pod's node tracked the connection as from this node's gateway
            flows = other.porin_json("bpf", "ct", "list", "global", "--src", gateway)
            assert any(f["dst"] == p.ip and f["proto"] == "TCP" for f in flows), flows
        route = n1.ns.exec(["ip", "route", "show", other.cfg.pod_cidr]).stdout
        want_mtu = 1450 if c.tunnel == "vxlan" else 1480
        assert f"dev porin_host proto 211 src {gateway} mtu {want_mtu}" in route
    # the other nodes know the gateway as this node (the remote-node identity)
    cache = ipcache(c.nodes[1])
    assert cache[f"{gateway}/32"]["identity"] == 6
    assert cache[f"{gateway}/32"]["tunnel_endpoint"] == n1.node_ip


def test_pod_mtu_accounts_for_the_tunnel(cluster):
    pod = next(iter(cluster.nodes[0].pods.values()))
    want = 1450 if cluster.tunnel == "vxlan" else 1480
    assert f"mtu {want}" in pod.exec(["ip", "-o", "link", "show", "eth0"]).stdout


def test_every_pod_reaches_every_other_pod(cluster):
    everyone = pods(cluster)
    for a in everyone:
        others = [b.ip for b in everyone if b is not a]
        for ip in others:
            assert a.ping(ip), f"{a.ip} cannot ping {ip}"
        out = a.exec(["python3", "-c", TCP_CLIENT, *others]).stdout.split()
        assert [x.split(":")[0] for x in out] == others


def test_underlay_carries_only_encapsulated_pod_traffic(cluster, tmp_path):
    c = cluster
    a = next(iter(c.nodes[0].pods.values()))
    b = next(iter(c.nodes[1].pods.values()))
    pcap = tmp_path / "underlay.pcap"
    cap = c.underlay.ns.popen(
        ["tcpdump", "-i", "br0", "-U", "-n", "-w", str(pcap), "ip"], stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, 10, "tcpdump to start")
        assert a.ping(b.ip, count=3) and b.ping(a.ip, count=3)
        a.exec(["python3", "-c", TCP_CLIENT, b.ip])
        time.sleep(0.5)  # let tcpdump flush the last packets it captured
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
    packets = rdpcap(str(pcap))
    pod_net = "10.244."
    tunneled = 0
    identity_a = c.nodes[0].porin_json("endpoint", "get", "1")["identity"]
    for p in packets:
        if IP not in p:
            continue
        outer = p[IP]
        assert not outer.src.startswith(pod_net) and not outer.dst.startswith(pod_net), (
            f"a pod address on the underlay unencapsulated: {outer.summary()}"
        )
        if c.tunnel == "vxlan" and UDP in outer and outer[UDP].dport == 8472:
            inner = VXLAN(bytes(outer[UDP].payload))
            if inner.haslayer(IP) and inner[IP].src == a.ip:
                assert inner.vni == identity_a
                tunneled += 1
        if c.tunnel == "ipip" and outer.proto == 4:
            inner = IP(bytes(outer.payload))
            assert inner.src.startswith(pod_net) and inner.dst.startswith(pod_net)
            tunneled += 1
    assert tunneled >= 3


def test_service_with_a_backend_per_node_from_every_node(cluster):
    c = cluster
    backends = [next(iter(n.pods.values())) for n in c.nodes[:3]]
    c.nodes[0].porin(
        "service",
        "update",
        "--id",
        "1",
        "--frontend",
        "10.96.0.10:80",
        "--backends",
        ",".join(f"{b.ip}:7000" for b in backends),
    )
    for n in c.nodes[:3]:
        wait_for(
            lambda n=n: any(s["id"] == 1 for s in n.porin_json("service", "list")),
            10,
            "the service to reach every node",
        )
    for n in c.nodes[:3]:
        client = list(n.pods.values())[1]
        out = client.exec(["python3", "-c", HTTP_CLIENT, "10.96.0.10", "60"]).stdout.split()
        assert set(out) == {b.ip for b in backends}, (n.ns.name, collections.Counter(out))
    c.nodes[1].porin("service", "delete", "1")
    for n in c.nodes[:3]:
        wait_for(lambda n=n: not n.porin_json("service", "list"), 10, "the delete to spread")


def test_stopped_node_disappears_and_comes_back(cluster):
    c = cluster
    gone = c.nodes[2]
    gone.stop_agent(signal.SIGKILL)
    for n in c.nodes[:2]:
        wait_for(
            lambda n=n: f"{gone.node_ip}/32" not in ipcache(n),
            LEASE_TTL + 10,
            "the stopped node's entries to expire",
        )
        cache = ipcache(n)
        assert gone.cfg.pod_cidr not in cache
        assert not any(e["tunnel_endpoint"] == gone.node_ip for e in cache.values())
        assert gone.ns.name not in {x["name"] for x in n.porin_json("node", "list")}
    gone.start_agent()
    for n in c.nodes[:2]:
        wait_for(lambda n=n: f"{gone.node_ip}/32" in ipcache(n), 10, "the node to rejoin")
        wait_for(
            lambda n=n: all(f"{p.ip}/32" in ipcache(n) for p in gone.pods.values()),
            10,
            "its pods to be known again",
        )
    a = next(iter(c.nodes[0].pods.values()))
    assert a.ping(next(iter(gone.pods.values())).ip)


def _svc(node: Node, sid: int, backend: str) -> None:
    node.porin("service", "update", "--id", str(sid), "--frontend", f"10.96.9.{sid}:80",
               "--backends", f"{backend}:80")  # fmt: skip


def _services(node: Node) -> dict[int, list[str]]:
    return {
        s["id"]: sorted(b["address"] for b in s["backends"])
        for s in node.porin_json("service", "list")
        if 200 <= s["id"] < 300
    }


def _policies(node: Node) -> set[str]:
    return {p["name"] for p in node.porin_json("policy", "list") if p["name"].startswith("outage-")}


def _apply(node: Node, name: str, tmp_path) -> subprocess.CompletedProcess:
    f = tmp_path / f"{name}-{node.ns.name}.yaml"
    f.write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: outage}}\n"
        "spec: {podSelector: {matchLabels: {app: none}}, policyTypes: [Ingress]}\n"
    )
    return node.porin("apply", "-f", str(f))


# the kvstore's part, which no tunnel changes: on VXLAN only
@pytest.mark.parametrize("cluster", ["vxlan"], indirect=True, scope="module")
def test_etcd_outage_keeps_traffic_and_loses_no_change(cluster, tmp_path):
    """etcd away while services and policies change on every node: forwarding
    goes on, the API takes the changes and says they are pending, and when etcd
    is back every node has every change; nothing deleted meanwhile comes back."""
    c = cluster
    n1, n2, n3 = c.nodes[:3]
    a = next(iter(n1.pods.values()))
    b = next(iter(n2.pods.values()))
    _svc(n1, 201, "10.244.1.201")  # deleted during the outage
    _svc(n2, 202, "10.244.2.202")  # changed during the outage
    _apply(n1, "outage-old", tmp_path)  # deleted during the outage
    gone = n3.add_pod()  # deleted during the outage: its ipcache key must go too
    for n in (n1, n2, n3):
        wait_for(lambda n=n: f"{gone.ip}/32" in ipcache(n), 10, "the pod to be known")
        wait_for(lambda n=n: set(_services(n)) >= {201, 202}, 10, "services shared")
        wait_for(lambda n=n: _policies(n) == {"outage-old"}, 10, "policy shared")
    conv = a.popen(["python3", "-c", CONVERSATION, b.ip], stdout=subprocess.PIPE, text=True)

    def advance(n: int = 5) -> None:
        start = int(conv.stdout.readline())
        while int(conv.stdout.readline()) < start + n:
            pass

    try:
        advance()
        c.etcd.stop()
        for n in c.nodes[:3]:
            wait_for(
                lambda n=n: n.porin_json("status")["kvstore"]["state"] == "degraded",
                20,
                "the agent to notice",
            )
        advance()  # still forwarding on the last known state
        r = n1.porin("service", "delete", "201")
        assert "pending" in r.stderr, r.stderr
        changed = n2.porin(
            "service", "update", "--id", "202", "--frontend", "10.96.9.202:80",
            "--backends", "10.244.2.99:80",
        )  # fmt: skip
        assert "pending" in changed.stderr
        _svc(n3, 203, "10.244.3.203")  # created during the outage
        assert "pending" in _apply(n3, "outage-new", tmp_path).stderr
        n2.porin("policy", "delete", "outage/outage-old")
        assert n3.del_pod(gone)[0] == 0
        assert 201 not in _services(n1) and _services(n2)[202] == ["10.244.2.99:80"]
        late = c.add_node(4 + len(c.nodes))  # its agent serves, degraded, without etcd
        assert late.porin_json("status")["kvstore"]["state"] == "degraded"
        advance()
        c.etcd.start()
        back = time.monotonic()
        want = {202: ["10.244.2.99:80"], 203: ["10.244.3.203:80"]}
        for n in (n1, n2, n3, late):
            try:
                wait_for(lambda n=n: _services(n) == want, 10, f"{n.ns.name} to converge")
            except TimeoutError:
                msg = f"{n.ns.name} has {_services(n)}, not {want}\n{n.log()}"
                raise AssertionError(msg) from None
            wait_for(lambda n=n: _policies(n) == {"outage-new"}, 10, f"{n.ns.name} policies")
            wait_for(lambda n=n: f"{gone.ip}/32" not in ipcache(n), 10, "the gone pod to go")
        print(f"every node converged {time.monotonic() - back:.1f} s after etcd returned")
        for n in c.nodes[:3]:
            wait_for(
                lambda n=n: n.porin_json("status")["kvstore"]["state"] == "connected",
                30,
                "reconnection",
            )
            wait_for(
                lambda n=n: f"{late.node_ip}/32" in ipcache(n),
                30,
                "the node added during the outage to be learned",
            )
        advance()
        assert conv.poll() is None
        # after every node's resync, still nothing came back
        for n in (n1, n2, n3, late):
            assert _services(n) == want and _policies(n) == {"outage-new"}
    finally:
        conv.kill()
        conv.wait()
    pod = late.add_pod()
    wait_for(lambda: f"{pod.ip}/32" in ipcache(c.nodes[0]), 10, "the late node's pod")
    assert a.ping(pod.ip)
    n1.porin("service", "delete", "202", "203")
    n1.porin("policy", "delete", "outage/outage-new")


def test_overlay_rejects_host_identity_and_unknown_nodes(cluster):
    """Crafted tunnel packets from a namespace on the node network: VXLAN claiming
    the host identity (spoofing another node's address), and packets from an
    address that is no node, are dropped with their reasons."""
    c = cluster
    target = c.nodes[0]
    victim = next(iter(target.pods.values()))
    spoofer = Netns(kind="spoof")
    inner = f'IP(src="10.244.2.99", dst="{victim.ip}") / ICMP()'
    if c.tunnel == "vxlan":
        frames = [
            (
                c.nodes[1].node_ip,
                f"UDP(sport=40000, dport=8472) / VXLAN(flags=0x08, vni=1) / Ether() / {inner}",
            ),
            (
                "198.18.0.99",
                f"UDP(sport=40000, dport=8472) / VXLAN(flags=0x08, vni=300) / Ether() / {inner}",
            ),
        ]
        expected = [
            "overlay packet claims the host identity",
            "tunnel packet from an address that is no node",
        ]
    else:
        frames = [("198.18.0.99", inner)]
        expected = ["tunnel packet from an address that is no node"]
    sends = "\n".join(
        f'sendp(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src="{src}", dst="{target.node_ip}"'
        f'{", proto=4" if c.tunnel == "ipip" else ""}) / {payload}, iface="eth0", count=3, '
        f"verbose=False)"
        for src, payload in frames
    )
    script = (
        "from scapy.all import Ether, IP, UDP, ICMP, sendp\n"
        "from scapy.layers.vxlan import VXLAN\n" + sends + "\n"
    )

    def drops() -> dict[str, int]:
        return {m["reason"]: m["packets"] for m in target.porin_json("metrics", "list", "--drops")}

    try:
        c.underlay.attach(spoofer, "198.18.0.99")
        before = drops()
        spoofer.exec([sys.executable, "-c", script])
        for reason in expected:
            wait_for(
                lambda r=reason: drops().get(r, 0) - before.get(r, 0) >= 3,
                10,
                f"drops '{reason}' to be counted",
            )
        assert victim.exec(["true"]).returncode == 0
    finally:
        spoofer.close()


def test_node_leaving_for_good_is_dropped(cluster):
    """Last in the module: a node uninstalled leaves the cluster: it removes its own
    keys from etcd and the others drop it."""
    from porinlab import VENV_BIN

    c = cluster
    leaving = c.nodes[2]
    leaving.stop_agent()
    r = leaving.ns.exec(
        [str(VENV_BIN / "porin-agent"), "--config", leaving.config_path, "--uninstall"]
    )
    assert f"node {leaving.ns.name} left the cluster" in r.stderr
    for n in c.nodes[:2]:
        wait_for(lambda n=n: f"{leaving.node_ip}/32" not in ipcache(n), 10, "the node to be gone")
        assert leaving.ns.name not in {x["name"] for x in n.porin_json("node", "list")}
    leaving.forget_pods()
