"""A real Prometheus scrapes the agents of a two-node cluster (real etcd) and
sees what happened there: a pod's drop, CNI ADDs, kvstore calls, map fill."""

from __future__ import annotations

import os
import subprocess

import pytest
from porinlab import Etcd, Node, Prometheus, Underlay, wait_for

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
        node.start_agent()
        return node

    def close(self) -> None:
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
        c.prom = Prometheus(c.underlay, PROM_IP, [f"{n.node_ip}:{PORT}" for n in c.nodes])
        c.prom.start()
        yield c
    finally:
        c.close()


def instance(node: Node) -> str:
    return f"{node.node_ip}:{PORT}"


def sel(name: str, node: Node, **labels: str) -> str:
    """A PromQL selector of `name` on `node`'s agent."""
    inner = ",".join(f'{k}="{v}"' for k, v in {**labels, "instance": instance(node)}.items())
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
