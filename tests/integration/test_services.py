"""ClusterIP services between real pods: balancing, backend churn, UDP, affinity,
no-backend refusal, agent restart, the services file, and the conntrack CLI."""

from __future__ import annotations

import collections
import errno
import signal
import subprocess
import threading

import pytest
from porinlab import Node, wait_for

from porin.client import AgentClient

VIP = "10.96.0.10"

HTTP_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
print("ready", flush=True)
s.serve_forever()
"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5353))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048); s.sendto(sys.argv[1].encode() + b":" + d, a)
"""

# 300 requests, each on a new connection; prints the answering backend per line
CLIENT_MANY = """
import socket, sys
for _ in range(int(sys.argv[3])):
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while True:
        d = c.recv(4096)
        if not d: break
        data += d
    print(data.split(b"\\r\\n\\r\\n", 1)[1].decode(), flush=True)
    c.close()
"""

# long-lived keep-alive connections through the VIP: one line per round of requests
CLIENT_KEEPALIVE = """
import socket, sys, time
conns = [socket.create_connection((sys.argv[1], 80), timeout=5) for _ in range(int(sys.argv[2]))]
def ask(c):
    c.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    buf = b""
    while b"\\r\\n\\r\\n" not in buf or len(buf.split(b"\\r\\n\\r\\n", 1)[1]) < 10:
        d = c.recv(4096)
        if not d: raise SystemExit("closed")
        buf += d
    return buf.split(b"\\r\\n\\r\\n", 1)[1].decode()
while True:
    line = sys.stdin.readline()
    if not line: break
    out = []
    for c in conns:
        try: out.append(ask(c))
        except Exception as e: out.append("ERR:" + type(e).__name__)
    print(" ".join(out), flush=True)
"""


def start(pod, script: str, *args: str) -> subprocess.Popen:
    p = pod.popen(["python3", "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    svc_file = tmp_path_factory.mktemp("svc") / "services.yaml"
    svc_file.write_text("services: []\n")
    node = Node(pod_cidr="10.247.0.0/24", servicesFile=str(svc_file))
    procs = []
    try:
        node.start_agent()
        client = node.add_pod()
        backends = [node.add_pod() for _ in range(3)]
        for b in backends:
            procs.append(start(b, HTTP_SERVER, b.ip))
            procs.append(start(b, UDP_ECHO, b.ip))
        yield node, client, backends, svc_file
    finally:
        for p in procs:
            p.kill()
            p.wait()
        node.close()


def update(node, sid, frontend, backends, *extra):
    node.porin(
        "service",
        "update",
        "--id",
        str(sid),
        "--frontend",
        frontend,
        "--backends",
        ",".join(backends),
        *extra,
    )


def hits(client, n=300, vip=VIP, port=80):
    out = client.exec(["python3", "-c", CLIENT_MANY, vip, str(port), str(n)], timeout=120).stdout
    return collections.Counter(out.split())


def test_clusterip_balances_over_all_backends(cluster):
    node, client, backends, _ = cluster
    update(node, 1, f"{VIP}:80", [f"{b.ip}:8080" for b in backends])
    c = hits(client, 300)
    assert sum(c.values()) == 300
    assert set(c) == {b.ip for b in backends}
    listed = node.porin_json("service", "list")
    assert listed[0]["frontend"] == f"{VIP}:80" and len(listed[0]["backends"]) == 3
    raw = node.porin("bpf", "lb", "list").stdout
    assert f"{VIP}:80/TCP" in raw and f"{backends[0].ip}:8080" in raw


def test_maglev_service_balances_too(cluster):
    node, client, backends, _ = cluster
    update(node, 3, "10.96.0.13:80", [f"{b.ip}:8080" for b in backends], "--algorithm", "maglev")
    c = hits(client, 150, vip="10.96.0.13")
    assert set(c) == {b.ip for b in backends}
    node.porin("service", "delete", "3")


def test_removing_a_backend_leaves_other_connections_alone(cluster):
    node, client, backends, _ = cluster
    update(node, 1, f"{VIP}:80", [f"{b.ip}:8080" for b in backends])
    ka = client.popen(
        ["python3", "-c", CLIENT_KEEPALIVE, VIP, "12"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ka.stdin.write("\n")
        ka.stdin.flush()
        first = ka.stdout.readline().split()
        assert len(first) == 12 and not any(x.startswith("ERR") for x in first)
        assert len(set(first)) >= 2, first
        victim = first[0]
        update(node, 1, f"{VIP}:80", [f"{b.ip}:8080" for b in backends if b.ip != victim])
        for _ in range(3):
            ka.stdin.write("\n")
            ka.stdin.flush()
            now = ka.stdout.readline().split()
            for before, after in zip(first, now, strict=True):
                if before != victim:
                    assert after == before, (first, now)
        # new connections never reach the removed backend
        assert victim not in hits(client, 60)
    finally:
        ka.kill()
        ka.wait()
        update(node, 1, f"{VIP}:80", [f"{b.ip}:8080" for b in backends])


def test_udp_service(cluster):
    node, client, backends, _ = cluster
    update(node, 2, "10.96.0.53:53", [f"{b.ip}:5353" for b in backends], "--protocol", "udp")
    script = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect(("10.96.0.53", 53))
for i in range(30):
    s.send(b"q%d" % i); print(s.recv(2048).decode())
"""
    out = client.exec(["python3", "-c", script]).stdout.split()
    assert len(out) == 30
    backend_ip = out[0].split(":")[0]
    # one UDP socket is one flow: conntrack keeps it on one backend, replies come from the VIP
    assert all(x.startswith(backend_ip + ":q") for x in out)
    node.porin("service", "delete", "2")


def test_udp_service_with_a_closed_backend_port_refuses(cluster):
    """The backend's port unreachable reaches the client as one about the
    frontend, so a connected UDP socket sees ECONNREFUSED instead of a timeout."""
    node, client, backends, _ = cluster
    update(node, 7, "10.96.0.54:53", [f"{backends[0].ip}:5999"], "--protocol", "udp")
    script = """
import errno, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.connect(("10.96.0.54", 53))
s.send(b"q")
try:
    s.recv(2048); print("answered")
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
"""
    out = client.exec(["python3", "-c", script]).stdout.strip()
    assert out == errno.errorcode[errno.ECONNREFUSED]
    node.porin("service", "delete", "7")


def test_session_affinity(cluster):
    node, client, backends, _ = cluster
    update(
        node, 4, "10.96.0.14:80", [f"{b.ip}:8080" for b in backends], "--affinity-timeout", "600"
    )
    assert len(hits(client, 40, vip="10.96.0.14")) == 1
    node.porin("service", "delete", "4")


def test_service_without_backends_refuses_at_once(cluster):
    node, client, _, _ = cluster
    update(node, 5, "10.96.0.15:80", [])
    script = """
import socket, errno
try:
    socket.create_connection(("10.96.0.15", 80), timeout=10)
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
"""
    out = client.exec(["python3", "-c", script]).stdout.strip()
    assert out == errno.errorcode[errno.ECONNREFUSED]
    drops = {m["reason"]: m["packets"] for m in node.porin_json("metrics", "list")}
    assert drops["service has no active backend (ICMP unreachable sent)"] >= 1
    node.porin("service", "delete", "5")


def test_hairpin_through_service(cluster):
    node, _, backends, _ = cluster
    b = backends[0]
    update(node, 6, "10.96.0.16:80", [f"{b.ip}:8080"])
    assert hits(b, 5, vip="10.96.0.16") == {b.ip: 5}
    node.porin("service", "delete", "6")


def test_ct_list_shows_the_flows(cluster):
    node, client, backends, _ = cluster
    update(node, 1, f"{VIP}:80", [f"{b.ip}:8080" for b in backends])
    node.porin("bpf", "ct", "flush", "global")
    hits(client, 3)
    svc = node.porin_json("bpf", "ct", "list", "global", "--src", client.ip, "--port", "80")
    assert len(svc) == 3
    assert all(c["service"] and c["dst"] == VIP and c["dport"] == 80 for c in svc)
    for c in svc:
        assert c["src"] == client.ip and c["proto"] == "TCP"
        assert c["tx_packets"] >= 4 and c["rx_packets"] >= 3 and c["tx_bytes"] > 100
        assert c["backend_id"] > 0 and c["rev_nat"] == 1
    flows = node.porin_json("bpf", "ct", "list", "global", "--src", client.ip, "--port", "8080")
    assert flows and all(c["dst"] in {b.ip for b in backends} for c in flows)
    assert all(c["direction"] == "OUT" and c["rev_nat"] == 1 for c in flows)
    text = node.porin("bpf", "ct", "list", "global", "--src", client.ip, "--proto", "tcp").stdout
    assert f"TCP SVC {client.ip}:" in text and f"-> {VIP}:80" in text and "RxPackets=" in text
    closing = node.porin_json(
        "bpf", "ct", "list", "global", "--src", client.ip, "--state", "closing"
    )
    assert all(c["state"] == "CLOSING" for c in closing)


def test_services_file_reload_and_rejection(cluster):
    node, client, backends, svc_file = cluster
    svc_file.write_text(
        f"services:\n  - frontend: 10.96.1.1:80\n    backends:\n      - {backends[1].ip}:8080\n"
    )
    node.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: any(s["frontend"] == "10.96.1.1:80" for s in node.porin_json("service", "list")),
        10,
        "file service to appear",
    )
    assert hits(client, 5, vip="10.96.1.1") == {backends[1].ip: 5}
    before = node.porin_json("service", "list")
    svc_file.write_text(
        "services:\n  - frontend: 10.96.1.1:80\n    backends:\n      - 10.96.1.1:99999\n"
    )
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "services file rejected" in node.log(), 10, "rejection in the log")
    assert "line 4" in node.log() and "backends[0]" in node.log()
    assert node.porin_json("service", "list") == before
    assert hits(client, 3, vip="10.96.1.1") == {backends[1].ip: 3}
    svc_file.write_text("services: []\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: all(s["frontend"] != "10.96.1.1:80" for s in node.porin_json("service", "list")),
        10,
        "file service to go",
    )


def test_api_rejects_bad_services_without_change(cluster):
    node, _, backends, _ = cluster
    before = node.porin_json("service", "list")
    for args in (
        ["--frontend", "10.96.0.99"],
        ["--frontend", "10.96.0.99:70000"],
        ["--frontend", "nope:80"],
        ["--frontend", "10.96.0.99:80", "--backends", "1.2.3.4"],
        ["--frontend", f"{VIP}:80"],  # frontend owned by service 1
    ):
        r = node.porin("service", "update", "--id", "77", *args, check=False)
        assert r.returncode == 1 and r.stderr.startswith("Error:"), args
    assert node.porin_json("service", "list") == before


def test_agent_restart_keeps_service_connections(cluster):
    node, client, backends, _ = cluster
    update(node, 1, f"{VIP}:80", [f"{b.ip}:8080" for b in backends])
    ka = client.popen(
        ["python3", "-c", CLIENT_KEEPALIVE, VIP, "6"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ka.stdin.write("\n")
        ka.stdin.flush()
        first = ka.stdout.readline().split()
        node.stop_agent(signal.SIGKILL)
        ka.stdin.write("\n")
        ka.stdin.flush()
        assert ka.stdout.readline().split() == first
        node.start_agent()
        ka.stdin.write("\n")
        ka.stdin.flush()
        assert ka.stdout.readline().split() == first
    finally:
        ka.kill()
        ka.wait()
    assert node.porin_json("service", "get", "1")["frontend"] == f"{VIP}:80"
    assert len(hits(client, 30)) == 3


def test_ct_flush_and_gc(cluster):
    node, client, backends, _ = cluster
    hits(client, 5)
    out = node.porin("bpf", "ct", "flush", "global").stdout
    n = int(out.split()[1])
    assert n > 0
    assert node.porin_json("bpf", "ct", "list", "global", "--src", client.ip) == []
    assert len(hits(client, 5)) >= 1  # new connections work after a flush
    gc = AgentClient(node.cfg.socket).request("POST", "/v1/ct/gc")
    assert gc["runs"] >= 1 and "fillRatio" in gc
    agent_metrics = node.porin_json("metrics", "agent")["conntrackGC"]
    assert agent_metrics["runs"] >= 1


def test_gc_removes_expired_and_does_not_stall_api(tmp_path):
    """A million expired entries: the GC clears them while the API keeps answering."""
    node = Node(pod_cidr="10.248.0.0/24", ctMapSize=1048576, ctGCInterval=300, ctGCMaxInterval=600)
    try:
        node.start_agent()
        from porin.maps.conntrack import ConntrackMap, CtEntry, CtKey

        with ConntrackMap(node.cfg.bpffs_root) as ct:
            pairs = [
                (
                    CtKey(saddr=i, daddr=0x0100000A, sport=i & 0xFFFF, dport=80, proto=6),
                    CtEntry(lifetime=1, state=3, dir=1),
                )
                for i in range(1, 1_000_001)
            ]
            ct.put_many(pairs)
            live = CtKey(saddr=7, daddr=7, sport=7, dport=7, proto=17)
            ct.put(live, CtEntry(lifetime=2**31, state=0, dir=1))
        client = AgentClient(node.cfg.socket, timeout=30)
        result = {}
        t = threading.Thread(target=lambda: result.update(client.request("POST", "/v1/ct/gc")))
        t.start()
        answered_during_gc = 0
        while t.is_alive():
            client.request("GET", "/v1/healthz")
            answered_during_gc += t.is_alive()
        t.join()
        assert result["deleted"] == 1_000_000
        assert answered_during_gc >= 1
        with ConntrackMap(node.cfg.bpffs_root) as ct:
            assert ct.get(live) is not None
            assert len(ct.connections()) == 1
    finally:
        node.close()


def test_service_changes_survive_a_crash_and_bulk_delete_empties_the_maps(cluster):
    node, _, backends, _ = cluster
    for sid in (20, 21, 22):
        update(node, sid, f"10.96.2.{sid}:80", [f"{backends[0].ip}:8080"])
    node.porin("service", "delete", "20", "21")
    update(node, 22, "10.96.2.22:81", [f"{backends[1].ip}:8080"])
    node.stop_agent(signal.SIGKILL)  # the journal, not a clean shutdown, must carry it
    node.start_agent()
    by_id = {s["id"]: s for s in node.porin_json("service", "list")}
    assert 20 not in by_id and 21 not in by_id
    assert by_id[22]["frontend"] == "10.96.2.22:81"
    assert by_id[22]["backends"][0]["address"] == f"{backends[1].ip}:8080"
    r = node.porin("service", "delete", "22", "99", check=False)
    assert r.returncode == 1 and "service 99 not found" in r.stderr
    assert any(s["id"] == 22 for s in node.porin_json("service", "list"))  # none deleted
    node.porin("service", "delete", "--all")
    assert node.porin_json("service", "list") == []
    assert node.porin_json("bpf", "lb", "list") == []
