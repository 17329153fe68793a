"""`porin trace` against what the same packet really does on one node: a
local pod, a Maglev service, a packet policy drops; and that a trace leaves
the live conntrack and counters as they were."""

from __future__ import annotations

import subprocess
import tempfile

import pytest
from porinlab import Node, wait_for

from porin.client import AgentClient, ApiError

VIP = "10.96.7.10"

SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(64); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""

# connect from a fixed source port; print who answered, or "blocked"
CONNECT = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[3]))); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(64).decode())
except OSError:
    print("blocked")
"""

DENY_WEB2 = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-admin, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web2}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: admin}}
"""


@pytest.fixture(scope="module")
def site():
    node = Node(pod_cidr="10.246.3.0/24")
    procs = []
    try:
        node.start_agent()
        client = node.add_pod("client", namespace="shop", labels={"app": "client"})
        webs = [
            node.add_pod(f"web{i}", namespace="shop", labels={"app": f"web{i}"}) for i in (1, 2)
        ]
        for w in webs:
            p = w.popen(["python3", "-c", SERVE, w.ip], stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            procs.append(p)
        yield node, client, webs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        node.close()


def trace(node, *args: str) -> dict:
    return node.porin_json("trace", *args)


def connect(pod, ip: str, port: int, sport: int) -> str:
    out = pod.exec(["python3", "-c", CONNECT, ip, str(port), str(sport)], timeout=30)
    return out.stdout.strip()


def decisions(res: dict, kind: str) -> list[dict]:
    return [d for st in res["stages"] for d in st["decisions"] if d["kind"] == kind]


def live_state(node) -> tuple[int, dict]:
    ct = len(node.porin_json("bpf", "ct", "list", "global"))
    counts = {
        (m["reasonName"], m["direction"]): m["packets"] for m in node.porin_json("metrics", "list")
    }
    return ct, counts


def forwarded(state: tuple[int, dict]) -> tuple[int, dict]:
    """Conntrack entries and FORWARDED counts (the pods' own IPv6 and the
    host's chatter move the other counters meanwhile)."""
    ct, counts = state
    return ct, {k: v for k, v in counts.items() if k[0] == "FORWARDED"}


def test_local_pod_trace_matches_the_real_connection_and_changes_nothing(site):
    node, client, (web1, _web2) = site
    before = forwarded(live_state(node))
    res = trace(node, "--from", "shop/client", "--to", f"{web1.ip}:8080/tcp", "--sport", "41001")
    assert res["source"]["pod"] == "client" and res["source"]["kind"] == "endpoint"
    assert res["verdict"]["result"] == "forwarded"
    assert res["verdict"]["reason"] == "FORWARDED"
    redirects = decisions(res, "redirect")
    assert redirects, res
    web1_ep = next(e for e in node.porin_json("endpoint", "list") if e["ipv4"].startswith(web1.ip))
    assert redirects[-1]["endpoint"] == web1_ep["id"]
    created = [c for c in res["changes"]["conntrack"] if c["change"] == "created"]
    assert {(c["src"], c["sport"], c["dst"], c["dport"]) for c in created} >= {
        (client.ip, 41001, web1.ip, 8080)
    }
    # the trace's entries and counts went to the copies, not to the live maps
    assert forwarded(live_state(node)) == before
    # the packet for real: delivered, and conntrack now holds what the trace said
    assert connect(client, web1.ip, 8080, 41001) == web1.ip
    live = node.porin_json("bpf", "ct", "list", "global")
    assert any(
        (c["src"], c["sport"], c["dst"], c["dport"]) == (client.ip, 41001, web1.ip, 8080)
        for c in live
    )


def test_service_trace_names_the_backend_a_real_connection_reaches(site):
    node, client, webs = site
    node.porin(
        "service", "update", "--id", "71", "--frontend", f"{VIP}:80",
        "--backends", ",".join(f"{w.ip}:8080" for w in webs), "--algorithm", "maglev",
    )  # fmt: skip
    try:
        seen = set()
        for sport in range(42001, 42011):
            res = trace(
                node, "--from", "shop/client", "--to", f"{VIP}:80/tcp", "--sport", str(sport)
            )
            (svc,) = decisions(res, "service")
            assert svc["frontend"] == f"{VIP}:80" and svc["how"] == "maglev"
            # named only when the slot holds the backend the program chose: ten
            # flows agreeing by chance with two backends would be 1 in 1,024
            assert svc["slot"] is not None and 0 <= svc["slot"] < svc["tableSize"]
            assert svc["text"].startswith(f"service {VIP}:80: backend ")
            nat = decisions(res, "nat")
            assert nat and nat[0]["rewrites"][0]["to"] == svc["backend"]
            expected = svc["backend"].split(":")[0]
            assert connect(client, VIP, 80, sport) == expected, (sport, svc)
            seen.add(expected)
        assert seen == {w.ip for w in webs}  # ten flows: both backends, each as traced
        # a later packet of the last flow: its backend is the one conntrack holds
        res = trace(
            node, "--from", "shop/client", "--to", f"{VIP}:80/tcp", "--sport", str(sport),
            "--flags", "A",
        )  # fmt: skip
        (svc,) = decisions(res, "service")
        assert svc["how"] == "existing-flow" and svc["backend"].split(":")[0] == expected
        assert decisions(res, "conntrack")[0]["status"] == "established"
    finally:
        node.porin("service", "delete", "71")


def test_policy_drop_is_traced_with_its_reason_and_happens(site):
    node, client, (_web1, web2) = site
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(DENY_WEB2)
        f.flush()
        node.porin("apply", "-f", f.name)
    try:
        wait_for(
            lambda: (
                trace(node, "--from", "shop/client", "--to", f"{web2.ip}:8080/tcp")["verdict"][
                    "result"
                ]
                == "dropped"
            ),
            timeout=10,
            what="the policy in the datapath",
        )
        res = trace(
            node, "--from", "shop/client", "--to", f"{web2.ip}:8080/tcp", "--sport", "43001"
        )
        assert res["verdict"]["reason"] == "POLICY"
        (pol,) = [d for d in decisions(res, "policy") if d["direction"] == "ingress"]
        assert not pol["allowed"]
        tuple_ = (client.ip, 43001, web2.ip, 8080)
        traced = any(
            (c["src"], c["sport"], c["dst"], c["dport"]) == tuple_
            for c in res["changes"]["conntrack"]
            if c["change"] == "created"
        )
        drops = lambda: live_state(node)[1].get(("POLICY", "ingress"), 0)  # noqa: E731
        n = drops()
        assert connect(client, web2.ip, 8080, 43001) == "blocked"
        wait_for(lambda: drops() > n, timeout=5, what="the real packet's policy drop")
        # the sender's conntrack entry: made for real exactly when the trace made one
        live = node.porin_json("bpf", "ct", "list", "global")
        assert traced == any((c["src"], c["sport"], c["dst"], c["dport"]) == tuple_ for c in live)
    finally:
        node.porin("policy", "delete", "shop/only-admin")


def test_trace_refuses_what_it_cannot_build(site):
    node, _client, _webs = site
    c = AgentClient(node.cfg.socket)
    with pytest.raises(ApiError) as e:
        c.request(
            "POST", "/v1/trace", {"from": "shop/client", "to": "10.0.0.1", "port": 80, "x": 1}
        )
    assert e.value.status == 400 and "unknown field" in e.value.message
    with pytest.raises(ApiError) as e:
        c.request("POST", "/v1/trace", {"from": "shop/nobody", "to": "10.0.0.1", "port": 80})
    assert e.value.status == 404 and "shop/nobody" in e.value.message
    with pytest.raises(ApiError) as e:
        c.request("POST", "/v1/trace", {"from": "shop/client", "to": "10.0.0", "port": 80})
    assert e.value.status == 400 and "IPv4" in e.value.message
    r = node.porin(
        "trace", "--from", "shop/client", "--to", "10.0.0.1:80/tcp", "--flags", "SX", check=False
    )
    assert r.returncode != 0 and "unknown TCP flag" in r.stderr
