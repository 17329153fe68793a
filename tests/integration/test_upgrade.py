"""An upgrade with traffic running: two nodes (VXLAN, etcd) run the previous
release (hack/previous_build.py: PREVIOUS_RELEASE); each node's agent in
turn is stopped and this build's started in its place, as a package upgrade
restarts the service. Four connections of a pod on the first node exchange
a message every 0.1 s throughout, each answered within 5 s: to a pod on the
same node, to a ClusterIP service, to an external host (masqueraded) and to
a pod on the other node. None may break; each path takes new connections
afterwards; and no pinned map's entries were dropped on the way. Then a
map's size, and its layout (a test build of the next release), change under
a service connection.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from porinlab import VENV_BIN, Etcd, Netns, Node, Underlay, wait_for
from previous_build import PREVIOUS_RELEASE, next_build, previous_build

ETCD_IP, EXT_IP = "198.18.0.2", "198.18.0.100"
SERVICE = "10.96.50.1"

ECHO = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 80)); srv.listen(128)
def serve(c):
    while (d := c.recv(100)):
        c.sendall(d)
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

CONVERSATION = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print("ready", flush=True)
n = 0
while True:
    try:
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise OSError("closed by the peer")
    except OSError as e:
        print("broken", e, flush=True)
        break
    n += 1
    print(n, flush=True)
    time.sleep(0.1)
"""

ONE = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=3)
s.sendall(b"x"); assert s.recv(1) == b"x"
"""


@pytest.fixture
def site(tmp_path: Path):
    old = previous_build(PREVIOUS_RELEASE, tmp_path / "previous")
    underlay = Underlay()
    etcd = Etcd(underlay, ETCD_IP)
    ext = Netns(kind="ext")
    nodes: list[Node] = []
    procs: list[subprocess.Popen] = []
    try:
        etcd.start()
        underlay.attach(ext, EXT_IP)
        for i in (1, 2):
            n = Node(
                pod_cidr=f"10.244.{i}.0/24",
                underlay=underlay,
                node_ip=f"198.18.0.{10 + i}",
                kvstore={"endpoints": [etcd.endpoint]},
                tunnel="vxlan",
                clusterCIDR="10.244.0.0/16",
            )
            n.bin = old
            nodes.append(n)
            n.start_agent()
        yield nodes, ext, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in nodes:
            n.close()
        ext.close()
        etcd.close()
        underlay.close()


def _serve(where, procs: list) -> None:
    p = where.popen(["python3", "-c", ECHO], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    procs.append(p)


def test_replacing_the_previous_release_breaks_no_connection(site):
    (n1, n2), ext, procs = site
    client, server = n1.add_pod(), n1.add_pod()
    remote = n2.add_pod()
    for where in (server.ns, remote.ns, ext):
        _serve(where, procs)
    n1.porin("service", "update", "--id", "50", "--frontend", f"{SERVICE}:80",
             "--backends", f"{server.ip}:80")  # fmt: skip
    wait_for(lambda: f"{remote.ip}/32" in n1.porin("bpf", "ipcache", "list").stdout, 15, "ipcache")
    targets = {"pod": server.ip, "service": SERVICE, "external": EXT_IP, "remote pod": remote.ip}
    convs = {}
    for what, ip in targets.items():
        p = client.popen(["python3", "-c", CONVERSATION, ip], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", what
        convs[what] = p
        procs.append(p)

    def answered(what: str, p: subprocess.Popen, n: int = 5) -> int:
        last = 0
        for _ in range(n):
            line = p.stdout.readline().strip()
            assert line and not line.startswith("broken"), f"{what}: {line or 'ended'}"
            last = int(line)
        return last

    for what, p in convs.items():
        answered(what, p)
    for node in (n1, n2):
        started = time.monotonic()
        assert node.stop_agent() == 0
        node.bin = VENV_BIN  # this build
        node.start_agent()
        took = time.monotonic() - started
        for what, p in convs.items():
            answered(what, p)  # messages kept flowing while no agent ran
        print(f"{node.ns.name}: this build's agent serves {took:.1f} s after the old one stopped")
        log = Path(node.log_path).read_text()
        assert "its entries are lost" not in log, log[-3000:]
    for what, ip in targets.items():
        r = client.exec(["python3", "-c", ONE, ip], check=False)
        assert r.returncode == 0, f"a new connection to the {what}: {r.stderr}"


# The release after this one, as a test build: a field inserted into the
# conntrack entry (every later field moves), and the layout it replaces
# declared, as a release that changes a map's layout does.
NEXT_CT_LAYOUT = [
    (
        "bpf/lib/conntrack.h",
        "\t__u32 lifetime;         /* expiry, seconds of CLOCK_MONOTONIC */\n",
        "\t__u32 lifetime;         /* expiry, seconds of CLOCK_MONOTONIC */\n"
        "\t__u32 generation;       /* the next release's field */\n",
    ),
    (
        "maps/conntrack.py",
        """        ("lifetime", ctypes.c_uint32),\n""",
        """        ("lifetime", ctypes.c_uint32),\n        ("generation", ctypes.c_uint32),\n""",
    ),
    (
        "maps/conntrack.py",
        "\nclass ConntrackMap(PinnedMap[CtKey, CtEntry]):\n",
        "\nclass CtEntryV1(ctypes.Structure):\n"
        '    _fields_ = [f for f in CtEntry._fields_ if f[0] != "generation"]\n\n\n'
        "class ConntrackMap(PinnedMap[CtKey, CtEntry]):\n"
        "    PREVIOUS_LAYOUTS = ((CtKey, CtEntryV1),)\n",
    ),
]

# what a carried-over entry keeps (counters and age only grow)
KEPT = ("proto", "direction", "service", "src", "sport", "dst", "dport", "state",
        "rev_nat", "backend_id", "protected")  # fmt: skip


def test_a_conntrack_table_of_another_size_or_layout_keeps_its_connections(tmp_path):
    """ctMapSize changed across a restart, then an upgrade to a build whose
    conntrack entry has another layout: each time ct4_global (and its
    protected copies) is recreated with its entries carried over, so a service
    connection keeps its backend and translation (its client is isolated for
    ingress: a reply that conntrack did not know would be dropped)."""
    following = next_build(tmp_path / "next", NEXT_CT_LAYOUT)
    node = Node(pod_cidr="10.244.7.0/24")
    procs: list[subprocess.Popen] = []
    try:
        node.start_agent()
        client = node.add_pod("client", namespace="up", labels={"app": "client"})
        server = node.add_pod("server", namespace="up", labels={"app": "server"})
        _serve(server.ns, procs)
        node.porin("service", "update", "--id", "51", "--frontend", f"{SERVICE}:80",
                   "--backends", f"{server.ip}:80")  # fmt: skip
        policy = tmp_path / "isolate.yaml"
        policy.write_text(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            "metadata: {name: client-takes-nothing, namespace: up}\n"
            "spec: {podSelector: {matchLabels: {app: client}}, policyTypes: [Ingress]}\n"
        )
        node.porin("apply", "-f", str(policy))
        p = client.popen(
            ["python3", "-c", CONVERSATION, SERVICE], stdout=subprocess.PIPE, text=True
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        for _ in range(3):
            assert p.stdout.readline().strip().isdigit()
        before = node.porin_json("bpf", "ct", "list", "global", "--src", client.ip)
        assert node.stop_agent() == 0
        node.cfg.extra["ctMapSize"] = 131072
        Path(node.config_path).write_text(node.cfg.to_yaml())
        node.start_agent()
        log = Path(node.log_path).read_text()
        assert "ct4_global is pinned as lru_hash" in log and "entries are carried over" in log
        assert "ct4_global: " in log and "entries carried over" in log
        for _ in range(10):
            line = p.stdout.readline().strip()
            assert line.isdigit(), f"the connection broke: {line or 'ended'}"
        after = node.porin_json("bpf", "ct", "list", "global", "--src", client.ip)
        assert {(c["dst"], c["dport"]) for c in after} == {(c["dst"], c["dport"]) for c in before}

        before = {tuple(c[f] for f in KEPT): c for c in after}
        assert node.stop_agent() == 0
        node.bin = following
        mark = len(Path(node.log_path).read_text())
        node.start_agent()
        log = Path(node.log_path).read_text()[mark:]
        assert "ct4_global is pinned as lru_hash key 16 value 64" in log, log[-3000:]
        assert "its entries are lost" not in log, log[-3000:]
        assert "ct4_global: " in log and "ct4_confirmed: " in log, log[-3000:]
        assert "left behind" not in log and "could not be carried over" not in log, log[-3000:]
        for _ in range(10):
            line = p.stdout.readline().strip()
            assert line.isdigit(), f"the connection broke after the upgrade: {line or 'ended'}"
        after = node.porin_json("bpf", "ct", "list", "global", "--src", client.ip)
        assert {tuple(c[f] for f in KEPT) for c in after} >= set(before), (before, after)
        for c in after:
            old = before.get(tuple(c[f] for f in KEPT))
            if old:  # the same entry, moved field by field
                assert c["age"] >= old["age"] and c["tx_packets"] >= old["tx_packets"], (old, c)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        node.close()
