"""Network policy on one node with the embedded store: the API's bad input,
CNI-declared labels and ports, the monitor's policy verdicts, restarts."""

from __future__ import annotations

import json
import subprocess
import tempfile

import pytest
from porinlab import VENV_BIN, wait_for

from porin.client import AgentClient, ApiError

SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hi"); c.close()
"""

CONNECT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.7); print(c.recv(10).decode())
except OSError:
    print("blocked")
"""


def connects(src, ip: str, port: int) -> bool:
    return src.exec(["python3", "-c", CONNECT, ip, str(port)]).stdout.strip() == "hi"


def apply(node, text: str, check: bool = True) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        return node.porin("apply", "-f", f.name, check=check)


@pytest.fixture(scope="module")
def pods(node):
    web = node.add_pod(
        "web",
        namespace="shop",
        labels={"app": "web"},
        ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
    )
    client = node.add_pod("client", namespace="shop", labels={"app": "client"})
    other = node.add_pod("other", namespace="default", labels={"app": "client"})
    procs = []
    for port in (8080, 9090):
        p = web.popen(["python3", "-c", SERVE, str(port)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
    yield web, client, other
    for p in procs:
        p.kill()
        p.wait()
    node.porin("policy", "delete", "--all", check=False)


WEB_POLICY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"documents": "x"}, "documents: must be a list"),
        ({"documents": [{"kind": "Pod"}]}, "unknown kind 'Pod'"),
        (
            {
                "documents": [
                    {
                        "apiVersion": "cilium.io/v2",
                        "kind": "CiliumNetworkPolicy",
                        "metadata": {"name": "a"},
                        "spec": {
                            "endpointSelector": {},
                            "egress": [{"toFQDNs": [{"matchName": "a.com"}]}],
                        },
                    }
                ]
            },
            "not supported by Porin",
        ),
        (
            {
                "documents": [
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "metadata": {"name": "a"},
                        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]},
                    }
                ]
            },
            "spec.ingress[0].ports[0].port",
        ),
    ],
)
def test_the_api_refuses_bad_documents(node, body, message):
    c = AgentClient(node.cfg.socket)
    with pytest.raises(ApiError) as e:
        c.request("POST", "/v1/policies/apply", body)
    assert e.value.status == 400 and message in e.value.message
    assert c.request("GET", "/v1/policies") == []


def test_named_ports_from_cni_args_and_namespaces(node, pods):
    web, client, other = pods
    assert connects(client, web.ip, 8080) and connects(other, web.ip, 8080)
    apply(node, WEB_POLICY)
    wait_for(lambda: not connects(other, web.ip, 8080), 10, "the other namespace to be refused")
    assert connects(client, web.ip, 8080)
    assert not connects(client, web.ip, 9090)  # not the named port
    ep = node.porin_json("endpoint", "list")
    (w,) = [e for e in ep if e["ipv4"].startswith(web.ip + "/")]
    assert w["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert w["labels"]["app"] == "web"


def test_monitor_shows_each_new_connections_verdict_and_rule(node, pods):
    web, client, other = pods
    apply(node, WEB_POLICY)
    wait_for(lambda: not connects(other, web.ip, 8080), 10, "the policy")
    mon = node.ns.popen(
        [
            str(VENV_BIN / "porin"),
            "monitor",
            "--type",
            "policy-verdict",
            "-o",
            "json",
            "--count",
            "2",
            "--duration",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=node.env,
    )
    try:
        wait_for(lambda: "Listening" in (mon.stderr.readline() or ""), 10, "the monitor to listen")
        assert connects(client, web.ip, 8080)
        assert not connects(other, web.ip, 8080)
        out, _ = mon.communicate(timeout=30)
    finally:
        mon.kill()
    events = [json.loads(line) for line in out.splitlines()]
    by_verdict = {e["verdict"]: e for e in events}
    allowed, denied = by_verdict["ALLOWED"], by_verdict["DENIED"]
    assert allowed["policy"] == "shop/web" and allowed["rule"] == "ingress[0]"
    assert allowed["packet"]["dst"] == web.ip and allowed["direction"] == "ingress"
    assert "app=client" in allowed["remoteLabels"]
    assert denied["defaultDeny"] == ["shop/web"] and denied["ruleId"] == 0
    assert denied["packet"]["src"] == other.ip


def test_the_node_itself_may_always_reach_its_pods(node, pods):
    web, client, other = pods
    apply(node, WEB_POLICY)
    wait_for(lambda: not connects(other, web.ip, 8080), 10, "the policy")
    probe = node.ns.exec(["python3", "-c", CONNECT, web.ip, "9090"]).stdout.strip()
    assert probe == "hi"  # kubelet probes: not the named port, from the node


def test_relabel_changes_what_is_allowed(node, pods):
    web, client, other = pods
    apply(node, WEB_POLICY)
    wait_for(lambda: not connects(other, web.ip, 8080), 10, "the policy")
    node.porin("endpoint", "label", "shop/client", "--set", "app=stranger")
    wait_for(lambda: not connects(client, web.ip, 8080), 5, "the relabelled client to be refused")
    node.porin("endpoint", "label", "shop/client", "--set", "app=client")
    wait_for(lambda: connects(client, web.ip, 8080), 5, "the client to be allowed again")


def test_policies_survive_an_agent_restart_on_the_embedded_store(node, pods):
    web, client, other = pods
    apply(node, WEB_POLICY)
    wait_for(lambda: not connects(other, web.ip, 8080), 10, "the policy")
    node.stop_agent()
    assert not connects(other, web.ip, 8080)  # the datapath enforces without its agent
    node.start_agent()
    assert not connects(other, web.ip, 8080)
    assert [p["name"] for p in node.porin_json("policy", "list")] == ["web"]
    node.porin("policy", "delete", "shop/web")
    wait_for(lambda: connects(other, web.ip, 8080), 10, "the policy to be gone")


def test_delete_of_what_does_not_exist_deletes_nothing(node, pods):
    apply(node, WEB_POLICY)
    other = WEB_POLICY.replace("name: web,", "name: ghost,")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(WEB_POLICY + "---\n" + other)
        f.flush()
        r = node.porin("delete", "-f", f.name, check=False)
    assert r.returncode != 0 and "shop/ghost not found" in r.stderr
    assert [p["name"] for p in node.porin_json("policy", "list")] == ["web"]
