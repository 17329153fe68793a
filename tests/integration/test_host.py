"""The host datapath on a node with an uplink: masquerade and NodePort, from
an external host on the node network; ICMP errors from a router beyond it."""

from __future__ import annotations

import json
import subprocess

import pytest
from porinlab import Netns, Node, Underlay

NODE_IP = "198.18.0.11"
EXT_IP = "198.18.0.100"
FAR_IP = "203.0.113.10"  # behind the external host, over a 1280-byte link

WHOAMI_SERVER = """
import asyncio, sys
async def handle(r, w):
    peer = w.get_extra_info("peername")
    await r.read(100)
    w.write(f"{peer[0]}:{peer[1]}".encode()); await w.drain()
    try:
        await r.read(100)  # hold the connection until the client closes it
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]), backlog=2048)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

# opens N connections at once and holds them; prints what the server saw for each
HOLDING_CLIENT = """
import socket, sys
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"hi"); socks.append(s)
print("\\n".join(s.recv(100).decode() for s in socks), flush=True)
sys.stdin.readline()
"""

ONE_SHOT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hi"); print(s.recv(100).decode()); s.close()
"""


def start(ns, script: str, *args: str) -> subprocess.Popen:
    p = ns.popen(["python3", "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture(scope="module")
def site():
    underlay = Underlay()
    ext, far = Netns(kind="ext"), Netns(kind="far")
    procs: list[subprocess.Popen] = []
    node = None
    try:
        underlay.attach(ext, EXT_IP)
        # the external host routes to a far host over a link with a smaller MTU
        ext.exec(
            [
                "ip",
                "link",
                "add",
                "tofar",
                "mtu",
                "1280",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                far.path,
            ]
        )
        ext.exec(["ip", "addr", "add", "203.0.113.1/24", "dev", "tofar"])
        ext.exec(["ip", "link", "set", "tofar", "up"])
        ext.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        far.exec(["ip", "link", "set", "eth0", "mtu", "1280", "up"])
        far.exec(["ip", "addr", "add", f"{FAR_IP}/24", "dev", "eth0"])
        far.exec(["ip", "route", "add", "default", "via", "203.0.113.1"])
        node = Node(
            pod_cidr="10.250.0.0/24",
            underlay=underlay,
            node_ip=NODE_IP,
            gateway=EXT_IP,
            ctLifetimeNonTCP=3,
        )
        node.start_agent()
        procs.append(start(ext, WHOAMI_SERVER, "8000"))
        yield node, ext, far
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if node is not None:
            node.close()
        for ns in (ext, far):
            ns.close()
        underlay.close()


def test_status_shows_host_datapath(site):
    node, _, _ = site
    st = node.porin_json("status")["host"]
    assert st["masquerade"] == "bpf"
    assert st["devices"][0]["name"] == "eth0" and st["devices"][0]["nodeIP"] == NODE_IP
    assert "10.250.0.0/24" in st["nonMasqueradeCIDRs"]
    text = node.porin("status").stdout
    assert "Masquerade:" in text and "NAT table:" in text


def test_external_server_sees_the_node_address(site):
    node, _, _ = site
    pod = node.add_pod()
    seen = pod.exec(["python3", "-c", ONE_SHOT, EXT_IP, "8000"]).stdout.strip()
    assert seen.split(":")[0] == NODE_IP
    port = int(seen.split(":")[1])
    nat = node.porin_json("bpf", "nat", "list", "--src", pod.ip)
    assert any(
        t["direction"] == "OUT"
        and t["dst"] == EXT_IP
        and t["xlate_addr"] == NODE_IP
        and t["xlate_port"] == port
        for t in nat
    )
    text = node.porin("bpf", "nat", "list", "--proto", "tcp").stdout
    assert f"TCP OUT {pod.ip}:" in text and f"XLATE_SRC {NODE_IP}:{port}" in text
    assert pod.ping(EXT_IP)
    metrics = {m["reason"]: m["packets"] for m in node.porin_json("metrics", "list")}
    assert metrics["source translated to the node address"] > 0
    assert metrics["reply to a masqueraded flow delivered to its pod"] > 0


def test_thousand_connections_from_several_pods_get_unique_tuples(site):
    node, _, _ = site
    pods = [node.add_pod() for _ in range(4)]
    clients = [
        p.popen(
            ["python3", "-c", HOLDING_CLIENT, "250", EXT_IP, "8000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in pods
    ]
    try:
        seen = []
        for c in clients:
            lines = [c.stdout.readline().strip() for _ in range(250)]
            assert all(lines), "a connection failed"
            seen += lines
        assert len(seen) == 1000
        assert {s.split(":")[0] for s in seen} == {NODE_IP}
        assert len(set(seen)) == 1000, "translated tuples collide"
        outs = [
            t
            for t in node.porin_json("bpf", "nat", "list", "--proto", "tcp", "--dst", EXT_IP)
            if t["direction"] == "OUT" and t["src"] in {p.ip for p in pods}
        ]
        assert len(outs) == 1000
    finally:
        for c in clients:
            c.stdin.close()
            c.wait(timeout=30)
    out = node.porin("bpf", "nat", "flush").stdout
    assert int(out.split()[1]) >= 2000
    assert node.porin_json("bpf", "nat", "list") == []
    # new connections work after a flush
    seen = pods[0].exec(["python3", "-c", ONE_SHOT, EXT_IP, "8000"]).stdout.strip()
    assert seen.startswith(NODE_IP + ":")


def test_nat_entries_go_with_their_conntrack_entries(site):
    """UDP conntrack lives 3 s here: once it has expired, a GC pass removes the
    flow's NAT entries too, and the flow is translated afresh when it resumes."""
    from porin.client import AgentClient
    from porin.maps.conntrack import monotonic_seconds

    node, ext, _ = site
    pod = node.add_pod()
    send = (
        "import socket, sys; s = socket.socket(2, 2); s.bind(('', 5555)); "
        "s.sendto(b'x', (sys.argv[1], 9999))"
    )
    pod.exec(["python3", "-c", send, EXT_IP])
    mine = lambda: [t for t in node.porin_json("bpf", "nat", "list", "--port", "5555")]  # noqa: E731
    assert len(mine()) == 2
    start = monotonic_seconds()
    client = AgentClient(node.cfg.socket)

    def gone() -> bool:
        client.request("POST", "/v1/ct/gc")
        return not mine()

    from porinlab import wait_for

    wait_for(gone, 15, "the NAT entries to be collected with their conntrack entry")
    assert monotonic_seconds() - start >= 2  # not before the conntrack entry expired
    assert node.porin_json("status")["host"]["nat"]["deletedTotal"] >= 2
    pod.exec(["python3", "-c", send, EXT_IP])
    assert len(mine()) == 2


def test_icmp_frag_needed_reaches_the_pod(site):
    node, _, _ = site
    pod = node.add_pod()
    out = pod.exec(["ping", "-M", "do", "-s", "1400", "-c", "2", "-W", "2", FAR_IP], check=False)
    assert "mtu = 1280" in out.stdout, out.stdout + out.stderr
    # the pod learned the path MTU: smaller packets now go through
    route = pod.exec(["ip", "route", "get", FAR_IP]).stdout
    assert "mtu 1280" in route
    assert (
        pod.exec(
            ["ping", "-M", "do", "-s", "1200", "-c", "1", "-W", "2", FAR_IP], check=False
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def nodeport(site):
    node, _, _ = site
    backend = node.add_pod()
    srv = start(backend, WHOAMI_SERVER, "8080")
    node.porin(
        "service",
        "update",
        "--id",
        "1",
        "--frontend",
        "10.96.0.10:80",
        "--backends",
        f"{backend.ip}:8080",
        "--type",
        "nodeport",
        "--node-port",
        "30080",
        "--external-traffic-policy",
        "local",
    )
    yield backend
    srv.kill()
    srv.wait()


def test_nodeport_from_external_host_keeps_client_address(site, nodeport):
    node, ext, _ = site
    seen = ext.exec(["python3", "-c", ONE_SHOT, NODE_IP, "30080"]).stdout.strip()
    assert seen.split(":")[0] == EXT_IP  # Local policy: the client address is kept
    svc = node.porin_json("service", "get", "1")
    assert svc["type"] == "nodeport" and svc["nodePort"] == 30080
    assert svc["externalTrafficPolicy"] == "local"
    listed = node.porin("service", "list").stdout
    assert "NODEPORT :30080 (local)" in listed
    raw = node.porin("bpf", "lb", "list").stdout
    assert f"{NODE_IP}:30080/TCP" in raw


def test_nodeport_from_pod_and_from_node(site, nodeport):
    node, _, _ = site
    client = node.add_pod()
    seen = client.exec(["python3", "-c", ONE_SHOT, NODE_IP, "30080"]).stdout.strip()
    assert seen.split(":")[0] == client.ip
    seen = node.ns.exec(["python3", "-c", ONE_SHOT, NODE_IP, "30080"]).stdout.strip()
    assert seen.split(":")[0] == NODE_IP


def test_nodeport_cluster_policy_and_unknown_port(site, nodeport):
    node, ext, _ = site
    node.porin(
        "service",
        "update",
        "--id",
        "2",
        "--frontend",
        "10.96.0.11:80",
        "--backends",
        f"{nodeport.ip}:8080",
        "--type",
        "nodeport",
    )
    port = node.porin_json("service", "get", "2")["nodePort"]
    assert 30000 <= port <= 32767 and port != 30080
    seen = ext.exec(["python3", "-c", ONE_SHOT, NODE_IP, str(port)]).stdout.strip()
    assert seen.split(":")[0] == EXT_IP  # one node: the backend is local, no SNAT needed
    # a port that no service has is the node's own business: refused by its stack
    r = ext.exec(["python3", "-c", ONE_SHOT, NODE_IP, "30999"], check=False)
    assert "ConnectionRefused" in r.stderr
    node.porin("service", "delete", "2")


def test_bad_service_type_input_rejected(site, nodeport):
    node, _, _ = site
    before = json.dumps(node.porin_json("service", "list"), sort_keys=True)
    for args in (
        ["--type", "nodeport", "--node-port", "80"],  # outside the NodePort range
        ["--type", "nodeport", "--node-port", "30080"],  # taken by service 1
        ["--node-port", "30500"],  # a node port on a ClusterIP service
    ):
        r = node.porin(
            "service", "update", "--id", "9", "--frontend", "10.96.0.99:80", *args, check=False
        )
        assert r.returncode == 1, args
    assert json.dumps(node.porin_json("service", "list"), sort_keys=True) == before


def test_uninstall_detaches_host_programs_only(site, nodeport):
    """Last in this module: it stops the agent. A filter someone else put on the
    uplink survives; Porin's leave eth0 and lo."""
    node, _, _ = site
    node.ns.exec(
        [
            "tc",
            "filter",
            "add",
            "dev",
            "eth0",
            "ingress",
            "prio",
            "7",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "flowid",
            "1:1",
        ]
    )
    node.stop_agent()
    from porinlab import VENV_BIN

    node.ns.exec([str(VENV_BIN / "porin-agent"), "--config", node.config_path, "--uninstall"])
    for dev, parent in (("eth0", "ingress"), ("eth0", "egress"), ("lo", "ingress")):
        shown = node.ns.exec(["tc", "filter", "show", "dev", dev, parent]).stdout
        assert "from_netdev" not in shown and "to_netdev" not in shown
        assert "from_host_lo" not in shown
    assert "u32" in node.ns.exec(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    node.forget_pods()
