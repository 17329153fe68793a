"""What an on-call engineer sees of a two-node cluster (real etcd): a real
Prometheus scraping both agents (a pod's drop, CNI ADDs, kvstore calls, map
fill), and the flow log of each node and of both (`porin observe`)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time

import pytest
from peers import WHOAMI, start, tcp
from porinlab import VENV_BIN, Etcd, Node, Prometheus, Underlay, start_agents, wait_for

ETCD_IP, PROM_IP = "198.18.0.2", "198.18.0.3"
PORT = 9962
HOLD_PORT = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 9962)); s.listen()
print("listening", flush=True); time.sleep(600)
"""


class Cluster:
    def __init__(self) -> None:
        self.underlay = Underlay()
        self.etcd = Etcd(self.underlay, ETCD_IP)
        self.nodes: list[Node] = []
        self.prom: Prometheus | None = None
        self.procs: list[subprocess.Popen] = []

    def add_node(self, i: int) -> Node:
        node = Node(
            pod_cidr=f"10.244.{i}.0/24",
            underlay=self.underlay,
            node_ip=f"198.18.0.{10 + i}",
            kvstore={"endpoints": [self.etcd.endpoint]},
            clusterCIDR="10.244.0.0/16",
            prometheusListen=f":{PORT}",
        )
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        if self.prom is not None:
            self.prom.close()
        for n in self.nodes:
            n.close()
        self.etcd.close()
        self.underlay.close()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.etcd.start()
        for i in (1, 2):
            c.add_node(i)
        start_agents(c.nodes)
        c.prom = Prometheus(c.underlay, PROM_IP, [f"{n.node_ip}:{PORT}" for n in c.nodes])
        c.prom.start()
        yield c
    finally:
        c.close()


def instance(node: Node) -> str:
    return f"{node.node_ip}:{PORT}"


def sel(name: str, of: Node, **labels: str) -> str:
    """A PromQL selector of `name` on the agent of node `of`."""
    inner = ",".join(f'{k}="{v}"' for k, v in {**labels, "instance": instance(of)}.items())
    return f"{name}{{{inner}}}"


def value(prom: Prometheus, expr: str) -> float:
    rows = prom.query(expr)
    return rows[0]["value"] if rows else 0.0


def test_prometheus_scrapes_every_agent(cluster):
    prom = cluster.prom
    want = {instance(n) for n in cluster.nodes}

    def all_up():
        rows = prom.query('up{job="porin-agent"}')
        return {r["metric"]["instance"] for r in rows if r["value"] == 1} == want

    wait_for(all_up, 30, "Prometheus to scrape both agents")
    nodes = {r["metric"]["node"] for r in prom.query("porin_agent_info")}
    assert nodes == {n.cfg.node_name for n in cluster.nodes}


def test_a_pods_drop_shows_in_prometheus(cluster):
    """A pod sends from an address that is not its own: the datapath drops it
    as INVALID_SIP, and Prometheus has the count for that node only."""
    n1, n2 = cluster.nodes
    pod = n1.add_pod()
    gateway = n1.porin_json("status")["gateway"]
    assert pod.ping(gateway)  # the gateway's MAC is known: no ARP from the forged address
    pod.exec(["ip", "addr", "add", "10.244.1.250/32", "dev", "eth0"])
    drops = sel("porin_drop_count_total", n1, reason="INVALID_SIP", direction="egress")
    before = value(cluster.prom, drops)
    forged = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.1.250", gateway]
    assert pod.exec(forged, check=False).returncode != 0
    counted = sum(
        m["packets"]
        for m in n1.porin_json("metrics", "list")
        if m["reasonName"] == "INVALID_SIP" and m["direction"] == "egress"
    )
    assert counted >= before + 3
    wait_for(lambda: value(cluster.prom, drops) >= counted, 15, "the drop to reach Prometheus")
    elsewhere = sel("porin_drop_count_total", n2, reason="INVALID_SIP", direction="egress")
    assert value(cluster.prom, elsewhere) == 0


def test_cni_adds_kvstore_calls_and_map_fill_reach_prometheus(cluster):
    n1 = cluster.nodes[0]
    n1.add_pod()
    prom = cluster.prom
    want = len(n1.porin_json("endpoint", "list"))
    adds = sel("porin_cni_request_duration_seconds_count", n1, command="ADD", outcome="success")
    wait_for(lambda: value(prom, adds) >= want, 15, "the ADDs in Prometheus")
    # the pods' endpoints are in the endpoints map, and its fill is scraped
    entries = sel("porin_bpf_map_entries", n1, map_name="endpoints")
    wait_for(lambda: value(prom, entries) >= want, 15, "the endpoints map fill")
    pressure = value(prom, sel("porin_bpf_map_pressure", n1, map_name="endpoints"))
    capacity = value(prom, sel("porin_bpf_map_capacity", n1, map_name="endpoints"))
    assert pressure == pytest.approx(value(prom, entries) / capacity)
    # the ADDs published the endpoints to etcd: kvstore calls are counted, none failed
    ops = prom.query(f"sum by (outcome) ({sel('porin_kvstore_operations_total', n1)})")
    by = {r["metric"]["outcome"]: r["value"] for r in ops}
    assert by.get("success", 0) > 0 and by.get("error", 0) == 0
    assert value(prom, sel("porin_kvstore_connected", n1)) == 1
    assert value(prom, sel("porin_nodes", n1, health="ok")) == 2
    assert value(prom, sel("porin_endpoints", n1, state="ready")) == want


def test_a_taken_metrics_port_fails_the_start_before_anything_changes():
    node = Node(pod_cidr="10.246.0.0/24", prometheusListen="127.0.0.1:9962")
    holder = node.ns.popen(
        ["python3", "-c", HOLD_PORT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "listening"
        with pytest.raises(RuntimeError) as e:
            node.start_agent()
        assert "prometheusListen 127.0.0.1:9962: cannot listen: Address already in use" in str(
            e.value
        )
        assert not os.path.exists(node.cfg.bpffs_root)  # no program built, no map pinned
        assert [lk for lk in node.links() if lk.startswith(("lxc", "porin_"))] == []
    finally:
        holder.kill()
        holder.wait()
        node.close()


# ---------------- the flow log ----------------


def observe(node: Node, *args: str) -> list[dict]:
    out = node.porin("observe", "-o", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def web(cluster):
    """web/client on node 1, web/server on node 2 (serving TCP on 7001), capture on."""
    n1, n2 = cluster.nodes
    client = n1.add_pod(name="client", namespace="web", labels={"app": "client"})
    server = n2.add_pod(name="server", namespace="web", labels={"app": "server"})
    cluster.procs.append(start(server.ns, WHOAMI, "7001"))
    for n in cluster.nodes:
        n.porin("observe", "--last", "1")  # on-demand capture: on from here
    wait_for(lambda: client.ping(server.ip), 15, "the overlay between the nodes")
    return client, server


def test_a_connection_across_nodes_names_both_pods_on_both_nodes(cluster, web):
    n1, n2 = cluster.nodes
    client, server = web
    assert tcp(client.ns, server.ip, 7001).stdout.split()[0] == client.ip

    def new_flow(node):
        rows = observe(node, "--from-pod", "web/client", "--to-pod", "web/server", "--port", "7001")
        return [f for f in rows if f["event"] == "new" and f["l4"]["protocol"] == "TCP"]

    sent = wait_for(lambda: new_flow(n1), 10, "node 1's record of the connection")[-1]
    assert sent["node"] == n1.cfg.node_name and sent["traffic_direction"] == "egress"
    assert sent["verdict"] == "forwarded" and sent["l4"]["flags"] == ["SYN"]
    src, dst = sent["source"], sent["destination"]
    assert (src["namespace"], src["pod_name"], src["ip"]) == ("web", "client", client.ip)
    # the remote end, from the ipcache the kvstore fills: its pod, labels and node
    assert (dst["pod_name"], dst["node"], dst["labels"]["app"]) == (
        "server",
        n2.cfg.node_name,
        "server",
    )
    (ep,) = [
        e for e in n2.porin_json("endpoint", "list") if e["containerID"] == server.container_id
    ]
    assert dst["identity"] == ep["identity"]
    got = wait_for(lambda: new_flow(n2), 10, "node 2's record of the connection")[-1]
    assert got["traffic_direction"] == "ingress" and got["source"]["pod_name"] == "client"
    # the first reply, on the server's node
    replies = [
        f
        for f in observe(n2, "--from-pod", "web/server", "--port", "7001")
        if f["is_reply"] and f["l4"]["protocol"] == "TCP"
    ]
    assert replies and replies[-1]["l4"]["flags"] == ["SYN", "ACK"]
    # every node's flows at once, from node 1
    both = observe(n1, "--cluster", "--to-pod", "web/server", "--port", "7001")
    assert {f["node"] for f in both} == {n1.cfg.node_name, n2.cfg.node_name}
    assert [f["unixTime"] for f in both] == sorted(f["unixTime"] for f in both)


def test_drops_are_flows_with_their_reason(cluster, web):
    n1 = cluster.nodes[0]
    client, _server = web
    gateway = n1.porin_json("status")["gateway"]
    client.exec(["ip", "addr", "add", "10.244.1.251/32", "dev", "eth0"])
    forged = ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", "10.244.1.251", gateway]
    client.exec(forged, check=False)

    def dropped():
        rows = observe(n1, "--verdict", "dropped", "--ip", "10.244.1.251")
        return [f for f in rows if f["drop_reason"] == "INVALID_SIP"]

    f = wait_for(dropped, 10, "the drop in the flow log")[-1]
    # the forged address is nobody's: the flow names the pod that sent it
    assert f["verdict"] == "dropped" and f["endpoint"] == "web/client"
    assert f["source"]["ip"] == "10.244.1.251" and f["l4"]["protocol"] == "ICMP"
    # filters AND: no forwarded flow comes back under --verdict dropped
    assert all(x["verdict"] == "dropped" for x in observe(n1, "--verdict", "dropped"))


def test_follow_streams_new_flows(cluster, web):
    n1 = cluster.nodes[0]
    client, server = web
    follower = n1.ns.popen(
        [str(VENV_BIN / "porin"), "observe", "--follow", "-o", "json", "--port", "7001"],
        env=n1.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        seen = None
        while seen is None and time.monotonic() < deadline:
            # a connection after the follower may or may not have attached: again until one shows
            tcp(client.ns, server.ip, 7001)
            line = _readline(follower, deadline)
            while line and seen is None:
                f = json.loads(line)
                if f["event"] == "new" and f["destination"]["ip"] == server.ip:
                    seen = f
                else:
                    line = _readline(follower, deadline)
        assert seen is not None, "no flow streamed within 15 s"
        assert seen["destination"]["pod_name"] == "server"
        assert seen["source"]["pod_name"] == "client"
    finally:
        follower.kill()
        follower.wait()


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    """The follower's next line, or "" if none comes within 2 s (read by a thread,
    so that lines already buffered are never waited on)."""
    lines = getattr(proc, "lines", None)
    if lines is None:
        lines = proc.lines = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in proc.stdout], daemon=True
        ).start()
    try:
        return lines.get(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
    except queue.Empty:
        return ""


def test_bad_filters_are_refused_with_their_name(cluster):
    n1 = cluster.nodes[0]
    r = n1.porin("observe", "--pod", "no-slash", check=False)
    assert r.returncode == 1 and "pod" in r.stderr and "NAMESPACE/NAME" in r.stderr
    r = n1.porin("observe", "--since", "yesterday", check=False)
    assert r.returncode == 1 and "since" in r.stderr
    r = n1.porin("observe", "--ip", "10.0.0.300", check=False)
    assert r.returncode == 1 and "not an IP address" in r.stderr


def test_the_peer_api_is_read_only_on_the_node_ip(cluster):
    n1, n2 = cluster.nodes
    url = f"http://{n2.node_ip}:4240"
    assert json.loads(n1.ns.exec(["curl", "-s", f"{url}/healthz"]).stdout)["node"] == (
        n2.cfg.node_name
    )
    code = n1.ns.exec(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"{url}/v1/flows"]
    ).stdout
    assert code == "405"
    # flows only for the cluster's nodes: the peer token is asked for
    r = n1.ns.exec(["curl", "-s", "-w", "\n%{http_code}", f"{url}/v1/flows"]).stdout
    assert r.endswith("401") and "peer token" in r
    from porin.client import AgentClient

    tokens = {AgentClient(n.cfg.socket).get("/v1/cluster/peer-token")["token"] for n in (n1, n2)}
    assert len(tokens) == 1  # one secret for the cluster, from the kvstore
    auth = f"Authorization: Bearer {tokens.pop()}"
    got = json.loads(n1.ns.exec(["curl", "-s", "-H", auth, f"{url}/v1/flows?last=1"]).stdout)
    assert "flows" in got and got["bufferSize"] > 0
    # bound to the node IP only: not on the node's loopback
    r = n2.ns.exec(["curl", "-s", "-m", "2", "http://127.0.0.1:4240/healthz"], check=False)
    assert r.returncode != 0


def test_on_demand_capture_goes_off_when_nobody_observes():
    node = Node(pod_cidr="10.247.0.0/24", flowCaptureLinger=1)
    try:
        node.start_agent()
        assert node.porin_json("status")["flows"]["enabled"] is False
        first = node.porin("observe")
        assert "flow capture was off until now" in first.stderr
        assert node.porin_json("status")["flows"]["enabled"] is True
        wait_for(
            lambda: node.porin_json("status")["flows"]["enabled"] is False,
            10,
            "capture to go off a second after the last observe",
        )
        from porin.maps.flow_config import FlowConfigMap

        with FlowConfigMap(node.cfg.bpffs_root) as m:
            assert m.current().enabled == 0  # the datapath writes nothing again
        # one node has nobody to probe, and says so
        r = node.porin("health", "status", check=False)
        assert r.returncode == 1 and "only in a cluster" in r.stderr
    finally:
        node.close()


# ---------------- status --verbose and sysdump ----------------


def test_verbose_status_shows_programs_map_fill_and_controllers(cluster):
    n1 = cluster.nodes[0]
    v = n1.porin_json("status", "--verbose")["verbose"]
    devices = {d["device"]: d["programs"] for d in v["devices"]}
    assert "tc ingress from_netdev" in devices["eth0"]
    assert any(p.startswith("xdp from_xdp (") for p in devices["eth0"])
    assert devices["porin_vxlan"] == ["tc ingress from_overlay"]
    fill = {m["name"]: m for m in v["maps"]}
    assert fill["endpoints"]["entries"] == len(n1.porin_json("bpf", "endpoint", "list"))
    controllers = {c["name"]: c for c in v["controllers"]}
    assert set(controllers) == {
        "conntrack-gc",
        "kvstore-keepalive",
        "monitor-watch",
        "flow-log",
        "node-health",
    }
    keepalive = controllers["kvstore-keepalive"]
    wait_for(
        lambda: (
            {c["name"]: c for c in n1.porin_json("status", "-v")["verbose"]["controllers"]}[
                "kvstore-keepalive"
            ]["runs"]
            > keepalive["runs"]
        ),
        10,
        "the kvstore keepalive to run again",
    )
    assert keepalive["consecutiveFailures"] == 0 and keepalive["lastError"] == ""


def test_sysdump_is_one_archive_of_everything(cluster, tmp_path):
    import tarfile

    n1 = cluster.nodes[0]
    path = tmp_path / "bundle.tar.gz"
    r = n1.porin("sysdump", "-o", str(path))
    assert str(path) in r.stdout
    with tarfile.open(path) as tar:
        files = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
        for want in (
            "versions.json",
            "config.json",
            "status.json",
            "endpoints.json",
            "services.json",
            "nodes.json",
            "flows.json",
            "agent.log",
            "metrics/prometheus.txt",
            "maps/ct4_global.json",
            "maps/ipcache.json",
        ):
            assert want in files, (want, sorted(files))
        read = lambda name: tar.extractfile(files[name]).read().decode()  # noqa: E731
        config = json.loads(read("config.json"))
        assert config["kvstore"] == {"endpoints": [cluster.etcd.endpoint]}
        assert "porin_drop_count_total" in read("metrics/prometheus.txt")
        assert "porin-agent" in read("agent.log")
        nodes = json.loads(read("nodes.json"))
        assert {n["name"] for n in nodes} == {n.cfg.node_name for n in cluster.nodes}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# ---------------- node health ----------------

VXLAN_DROP = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"]


def health_of(node: Node, other: Node) -> dict:
    (h,) = [h for h in node.porin_json("health", "status") if h["name"] == other.cfg.node_name]
    return h


def paths(h: dict) -> dict[str, bool | None]:
    return {
        "icmp": h["nodeNetwork"]["icmp"]["reachable"],
        "http": h["nodeNetwork"]["http"]["reachable"],
        "overlay": h["overlay"]["http"]["reachable"],
    }


def test_every_node_probes_the_others_over_the_node_network_and_the_overlay(cluster):
    n1, n2 = cluster.nodes
    ok = {"icmp": True, "http": True, "overlay": True}
    wait_for(lambda: paths(health_of(n1, n2)) == ok, 15, "node 1 to reach node 2 every way")
    wait_for(lambda: paths(health_of(n2, n1)) == ok, 15, "node 2 to reach node 1 every way")
    h = health_of(n1, n2)
    assert h["ip"] == n2.node_ip and h["overlayIP"] == n2.porin_json("status")["gateway"]
    assert h["healthy"] and h["nodeNetwork"]["icmp"]["latencyMs"] > 0


def test_a_broken_overlay_shows_while_the_node_network_works(cluster):
    n1, n2 = cluster.nodes
    wait_for(lambda: health_of(n1, n2)["healthy"], 15, "a healthy start")
    n2.ns.exec(["iptables", "-I", *VXLAN_DROP])  # node 2 takes no VXLAN any more
    try:
        broken = {"icmp": True, "http": True, "overlay": False}
        started = time.monotonic()
        wait_for(lambda: paths(health_of(n1, n2)) == broken, 10, "the broken overlay to show")
        assert time.monotonic() - started < 10
        h = health_of(n1, n2)
        assert not h["healthy"] and h["overlay"]["http"]["lastError"]
        reachable = sel("porin_node_reachable", n1, node=n2.cfg.node_name, path="overlay")
        wait_for(lambda: cluster.prom.query(reachable)[0]["value"] == 0, 15, "Prometheus to see it")
    finally:
        n2.ns.exec(["iptables", "-D", *VXLAN_DROP])
    wait_for(lambda: health_of(n1, n2)["healthy"], 15, "the overlay to recover")
