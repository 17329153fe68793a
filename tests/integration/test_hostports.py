"""Host ports (the CNI portMappings capability), as Podman and containerd
pass them: reached from an external host, from other pods and from the
node itself (its address and 127.0.0.1), released with the pod, refused
when taken, kept across a restart; and Debian's portmap chained after
Porin still works."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

import pytest
from peers import WHOAMI, start, tcp, udp
from porinlab import Netns, Node, Underlay, wait_for

NODE_IP = "198.18.0.31"
EXT_IP = "198.18.0.130"


@contextlib.contextmanager
def node_with_external_host(pod_cidr: str) -> Iterator[tuple[Node, Netns]]:
    """A node with an uplink, its agent started, and an external host beside it."""
    underlay = Underlay(subnet="198.18.0.0/24")
    ext = Netns(kind="ext")
    node = None
    try:
        underlay.attach(ext, EXT_IP)
        node = Node(pod_cidr=pod_cidr, underlay=underlay, node_ip=NODE_IP, gateway=EXT_IP)
        node.start_agent()
        yield node, ext
    finally:
        if node is not None:
            node.close()
        ext.close()
        underlay.close()


@pytest.fixture(scope="module")
def site():
    with node_with_external_host("10.251.0.0/24") as s:
        yield s


def mapped_pod(node: Node, *mappings: dict) -> object:
    return node.add_pod(runtimeConfig={"portMappings": list(mappings)})


def test_host_port_reached_from_everywhere_and_released_at_del(site, snapshot, settled):
    node, ext = site
    before = snapshot(node)
    pod = mapped_pod(node, {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"})
    srv = start(pod, WHOAMI, "8080")
    try:
        # from outside, the client's address is kept
        assert tcp(ext, NODE_IP, 18080).stdout.split()[0] == EXT_IP
        # from another pod, to the node's address
        client = node.add_pod()
        assert tcp(client, NODE_IP, 18080).stdout.split()[0] == client.ip
        # from the node, to its address and to the loopback; the socket's
        # peer stays what it asked for
        assert tcp(node.ns, NODE_IP, 18080).stdout.split()[0] == NODE_IP
        seen, peer, port = tcp(node.ns, "127.0.0.1", 18080).stdout.split()
        assert (peer, port) == ("127.0.0.1", "18080")
        # listed as a service of the endpoint, and in the maps
        svcs = [s for s in node.porin_json("service", "list") if s["type"] == "hostport"]
        assert len(svcs) == 1
        assert svcs[0]["frontend"] == "0.0.0.0:18080"
        assert svcs[0]["backends"][0]["address"] == f"{pod.ip}:8080"
        ep = [e for e in node.porin_json("endpoint", "list") if e["ipv4"].startswith(pod.ip + "/")]
        assert svcs[0]["endpoint"] == ep[0]["id"]
        lb = node.porin("bpf", "lb", "list").stdout
        assert f"{NODE_IP}:18080/TCP" in lb and "127.0.0.1:18080/TCP" in lb
        # not the API's to change
        r = node.porin("service", "delete", str(svcs[0]["id"]), check=False)
        assert r.returncode != 0 and "host port of endpoint" in r.stderr
        node.del_pod(client)
    finally:
        srv.kill()
        srv.wait()
    node.del_pod(pod)
    assert not [s for s in node.porin_json("service", "list") if s["type"] == "hostport"]
    r = tcp(ext, NODE_IP, 18080, check=False)
    assert r.returncode != 0 and "ConnectionRefused" in r.stderr
    assert "18080" not in node.porin("bpf", "lb", "list").stdout
    settled(node, before)


def test_udp_host_port_on_the_loopback_answers_from_what_was_asked(site):
    node, ext = site
    pod = mapped_pod(node, {"hostPort": 15353, "containerPort": 53, "protocol": "udp"})
    srv = start(pod, WHOAMI, "53")
    try:
        seen, peer, port = udp(node.ns, "127.0.0.1", 15353).stdout.split()
        assert (peer, port) == ("127.0.0.1", "15353")
        seen, peer, port = udp(ext, NODE_IP, 15353).stdout.split()
        assert (seen, peer, port) == (EXT_IP, NODE_IP, "15353")
    finally:
        srv.kill()
        srv.wait()
        node.del_pod(pod)


def test_host_ip_limits_where_the_port_answers(site):
    node, ext = site
    pod = mapped_pod(
        node, {"hostPort": 18081, "containerPort": 8080, "protocol": "tcp", "hostIP": "127.0.0.1"}
    )
    srv = start(pod, WHOAMI, "8080")
    try:
        assert tcp(node.ns, "127.0.0.1", 18081).returncode == 0
        r = tcp(ext, NODE_IP, 18081, check=False)
        assert r.returncode != 0 and "ConnectionRefused" in r.stderr
    finally:
        srv.kill()
        srv.wait()
        node.del_pod(pod)


def test_taken_host_port_refuses_the_add_and_leaks_nothing(site, snapshot, settled):
    node, _ = site
    first = mapped_pod(node, {"hostPort": 18082, "containerPort": 80})
    before = snapshot(node)
    ns = Netns(kind="pod")
    try:
        taken = [{"hostPort": 18082, "containerPort": 81}]
        conf = node.netconf(runtimeConfig={"portMappings": taken})
        rc, out = node.cni("ADD", "taken-1", ns.path, conf=conf)
        assert rc == 1 and out["code"] == 7
        assert "host port 18082/tcp is already taken by endpoint" in out["msg"]
        settled(node, before)
        # a node port cannot take it either
        r = node.porin(
            "service", "update", "--id", "7", "--frontend", "10.96.7.7:80",
            "--backends", f"{first.ip}:80", "--type", "nodeport", "--node-port", "18082",
            check=False,
        )  # fmt: skip
        assert r.returncode != 0
        # bad mappings: named, and nothing made
        for bad, what in (
            ({"hostPort": 0, "containerPort": 80}, "hostPort"),
            ({"hostPort": 18083, "containerPort": 80, "protocol": "sctp"}, "protocol"),
            ({"hostPort": 18083, "containerPort": 80, "hostIP": "192.0.2.9"}, "192.0.2.9"),
            ({"hostPort": 18083, "containerPort": 80, "bogus": 1}, "bogus"),
        ):
            conf = node.netconf(runtimeConfig={"portMappings": [bad]})
            rc, out = node.cni("ADD", "bad-1", ns.path, conf=conf)
            assert rc == 1 and out["code"] == 7 and what in out["msg"], out
            settled(node, before)
    finally:
        ns.close()
        node.del_pod(first)


def test_host_ports_survive_a_restart_and_go_with_a_pod_that_went(fresh_hostport_node):
    node, ext = fresh_hostport_node
    kept = mapped_pod(node, {"hostPort": 18090, "containerPort": 8080})
    gone = mapped_pod(node, {"hostPort": 18091, "containerPort": 8080})
    srv = start(kept, WHOAMI, "8080")
    try:
        node.stop_agent()
        gone.ns.close()  # the pod's netns goes while the agent is down
        node.start_agent()
        frontends = {
            s["frontend"] for s in node.porin_json("service", "list") if s["type"] == "hostport"
        }
        assert frontends == {"0.0.0.0:18090"}
        assert tcp(ext, NODE_IP, 18090).stdout.split()[0] == EXT_IP
        assert tcp(node.ns, "127.0.0.1", 18090).returncode == 0
    finally:
        srv.kill()
        srv.wait()


@pytest.fixture
def fresh_hostport_node():
    with node_with_external_host("10.252.0.0/24") as s:
        yield s


def test_portmap_chained_after_porin_still_works(site):
    """[porin, portmap]: Debian's portmap gets porin's result and the mappings
    and DNATs with iptables; porin itself is given no capability here."""
    node, ext = site
    ns = Netns(kind="pod")
    cid = f"portmap-{ns.name}"
    mappings = [{"hostPort": 18095, "containerPort": 8080, "protocol": "tcp"}]
    env = {
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": ns.path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }

    def portmap(command: str, prev: dict) -> subprocess.CompletedProcess:
        conf = {
            "cniVersion": "1.0.0",
            "name": "porin",
            "type": "portmap",
            "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": prev,
        }
        return subprocess.run(
            ["nsenter", f"--net={node.ns.path}", "/usr/lib/cni/portmap"],
            input=json.dumps(conf).encode(),
            env={**env, "CNI_COMMAND": command, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            capture_output=True,
        )

    srv = None
    try:
        rc, result = node.cni("ADD", cid, ns.path)
        assert rc == 0
        proc = portmap("ADD", result)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        srv = start(ns, WHOAMI, "8080")
        assert tcp(ext, NODE_IP, 18095).returncode == 0
        assert not [s for s in node.porin_json("service", "list") if s["type"] == "hostport"]
        assert portmap("DEL", result).returncode == 0
        wait_for(
            lambda: tcp(ext, NODE_IP, 18095, check=False).returncode != 0,
            what="portmap's DNAT removed",
        )
    finally:
        if srv is not None:
            srv.kill()
            srv.wait()
        node.cni("DEL", cid, ns.path)
        ns.close()
