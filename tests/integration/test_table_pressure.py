"""A pod floods the conntrack and NAT tables; the other pods' connections hold.

A node with small tables (conntrack LRU 1,024, confirmed copies 256, NAT
512) and three pods: A holds two connections that exchange a message every
second, one to pod B and one masqueraded to an external host; A is isolated
for ingress (a NetworkPolicy with no rule), so any packet of B's or the
external host's that conntrack does not know as a reply is dropped, and a
lost entry shows as a broken connection. C floods:
  1. connection attempts as fast as it can, to a closed port of B and of the
     external host (every one answered with a reset, never confirmed): the
     LRU churns, the NAT table fills (DROP_NAT_MAP_FULL);
  2. connections it completes and holds, to B, until no more are taken:
     the confirmed table fills and new flows are refused (DROP_CT_MAP_FULL).
Throughout, A's connections go on. When C stops and closes, the tables
recover by themselves: C's new connections work again.
"""

from __future__ import annotations

import subprocess
import tempfile
import time

import pytest
from porinlab import Netns, Node, Underlay, wait_for

NODE_IP = "198.18.0.11"
FLOOD = 6  # seconds of connection attempts
EXT_IP = "198.18.0.100"

ECHO = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(4096)
def serve(c):
    while True:
        d = c.recv(100)
        if not d:
            return c.close()
        c.sendall(d)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# a message every second, each answered within 5 s; one line per answer, then
# "broken" and the error when one is not
CONVERSATION = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
n = 0
print("ready", flush=True)
while True:
    try:
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise OSError("connection closed")
    except OSError as e:
        print("broken", e, flush=True)
        break
    n += 1
    print(n, flush=True)
    time.sleep(1)
"""

# attempts to closed ports for `secs` seconds, as fast as one process can;
# prints how many were made
ATTEMPTS = """
import socket, sys, time
secs, targets = float(sys.argv[1]), [(h, int(p)) for h, p in (t.split(":") for t in sys.argv[2:])]
n, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    for t in targets:
        s = socket.socket(); s.setblocking(False)
        s.connect_ex(t); s.close(); n += 1
print(n, flush=True)
"""

# connections completed and held until stdin closes: prints how many were
# taken before `limit` or the first that timed out
HOLD = """
import socket, sys
host, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
try:
    while len(socks) < limit:
        socks.append(socket.create_connection((host, port), timeout=2))
except OSError:
    pass
print(len(socks), flush=True)
sys.stdin.read()
"""

ONE = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"x"); assert s.recv(1) == b"x"
"""


@pytest.fixture
def site():
    underlay = Underlay()
    ext = Netns(kind="ext")
    procs: list[subprocess.Popen] = []
    node = None
    try:
        underlay.attach(ext, EXT_IP)
        node = Node(
            pod_cidr="10.251.0.0/24",
            underlay=underlay,
            node_ip=NODE_IP,
            gateway=EXT_IP,
            ctMapSize=1024,
            ctConfirmedMapSize=256,
            natMapSize=512,
            ctGCMinInterval=1,
            ctLifetimeTCPClose=2,  # the flood's reset flows go sooner: a quicker recovery
        )
        node.start_agent()
        pods = {
            name: node.add_pod(name, namespace="press", labels={"app": name})
            for name in ("a", "b", "c")
        }
        for where in (ext, pods["b"].ns):
            p = where.popen(["python3", "-c", ECHO, "80"], stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            procs.append(p)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                "metadata: {name: a-takes-nothing, namespace: press}\n"
                "spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress]}\n"
            )
            f.flush()
            node.porin("apply", "-f", f.name)
        yield node, pods, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if node is not None:
            node.close()
        ext.close()
        underlay.close()


def _drops(node: Node) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in node.porin_json("metrics", "list", "--drops"):
        out[m["reasonName"]] = out.get(m["reasonName"], 0) + int(m["packets"])
    return out


def test_a_flood_fills_the_tables_and_other_pods_connections_hold(site):
    node, pods, procs = site
    a, b, c = pods["a"], pods["b"], pods["c"]
    convs = []
    for target in (b.ip, EXT_IP):
        p = a.popen(
            ["python3", "-c", CONVERSATION, target, "80"], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline().strip() == "ready"
        convs.append(p)
    procs.extend(convs)

    def answers(p: subprocess.Popen, n: int = 2) -> None:
        """n more answers on conversation p, or its failure."""
        for _ in range(n):
            line = p.stdout.readline().strip()
            assert line and not line.startswith("broken"), f"a connection of A broke: {line}"

    for p in convs:
        answers(p)
    drops0 = _drops(node)

    def restored() -> int:
        return node.porin_json("status")["conntrack"]["confirmed"]["restored"]

    # 1. attempts nobody confirms, to closed ports of B and of the external
    # host, until the LRU has evicted an entry of A's at least once (it keeps
    # recently used entries, so how soon depends on the flood's rate): A's
    # flows must go on because their entries are put back
    t0, attempts = time.monotonic(), 0
    while True:
        flood = c.exec(["python3", "-c", ATTEMPTS, str(FLOOD), f"{b.ip}:81", f"{EXT_IP}:81"])
        attempts += int(flood.stdout.split()[-1])
        for p in convs:
            assert p.poll() is None, f"a connection of A broke: {p.stdout.read()}"
        if restored() > 0 or time.monotonic() - t0 > 5 * FLOOD:
            break
    rate = attempts / (time.monotonic() - t0)
    for p in convs:
        answers(p)
    assert restored() > 0, f"{attempts} attempts ({rate:.0f}/s) evicted no entry of A's"
    drops1 = _drops(node)
    nat_full = drops1.get("NAT_MAP_FULL", 0) - drops0.get("NAT_MAP_FULL", 0)
    assert nat_full > 0, drops1  # the NAT table filled: new masqueraded flows refused, counted

    # 2. connections completed and held until no more are taken
    hold = c.popen(
        ["python3", "-c", HOLD, b.ip, "80", "2000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(hold)
    held = int(hold.stdout.readline())
    assert held < 2000  # refused once the confirmed table was full
    for p in convs:
        answers(p)
    drops2 = _drops(node)
    ct_full = drops2.get("CT_MAP_FULL", 0) - drops1.get("CT_MAP_FULL", 0)
    assert ct_full > 0, drops2
    for p in convs:
        assert p.poll() is None

    # the flood stops: C's connections end and the tables recover by themselves
    hold.stdin.close()
    hold.wait(10)
    stopped = time.monotonic()
    recovered = {}
    for target in (b.ip, EXT_IP):
        wait_for(
            lambda t=target: c.exec(["python3", "-c", ONE, t, "80"], check=False).returncode == 0,
            60,
            f"a new connection from C to {target} after the flood",
        )
        recovered[target] = time.monotonic() - stopped
    for p in convs:
        answers(p, 1)
    print(
        f"flood: {attempts} attempts ({rate:.0f}/s), NAT_MAP_FULL {nat_full}, "
        f"{restored()} evicted entries of A's put back; "
        f"{held} connections held, CT_MAP_FULL {ct_full}; "
        f"A's 2 connections unbroken; new connections again after the flood: to B in "
        f"{recovered[b.ip]:.1f} s, to the external host in {recovered[EXT_IP]:.1f} s"
    )
