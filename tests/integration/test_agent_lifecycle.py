"""Agent restarts, crashes and shutdown: the datapath and the state survive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from porinlab import VENV_BIN, Netns, wait_for

# A long-lived TCP conversation: the client sends a line every 20 ms and
# prints a count of echoes; any error ends it with a non-zero status.
ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7100)); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
while True:
    d = c.recv(64)
    if not d: break
    c.sendall(d)
"""
ECHO_CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7100), timeout=3)
n = 0
while True:
    c.sendall(b"x"); assert c.recv(64) == b"x"; n += 1
    print(n, flush=True); time.sleep(0.02)
"""


class Conversation:
    def __init__(self, server, client) -> None:
        self.srv = server.popen(
            ["python3", "-c", ECHO_SERVER, server.ip], stdout=subprocess.PIPE, text=True
        )
        assert self.srv.stdout.readline().strip() == "ready"
        self.cli = client.popen(
            ["python3", "-c", ECHO_CLIENT, server.ip],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.count = 0

    def advance(self, n: int = 10, timeout: float = 5.0) -> None:
        """Wait until `n` more round trips have completed on the same connection."""
        target = self.count + n
        deadline = time.monotonic() + timeout
        while self.count < target:
            assert time.monotonic() < deadline, "conversation stalled"
            line = self.cli.stdout.readline()
            assert line, f"client died: {self.cli.stderr.read()}"
            self.count = int(line)

    def close(self) -> None:
        for p in (self.cli, self.srv):
            p.kill()
            p.wait()


def test_tcp_connection_survives_agent_kill_and_restart(fresh_node):
    node = fresh_node
    a, b = node.add_pod(), node.add_pod()
    conv = Conversation(a, b)
    try:
        conv.advance()
        node.stop_agent(signal.SIGKILL)
        conv.advance()  # no agent at all: the datapath keeps forwarding
        node.start_agent()
        conv.advance()
        assert conv.cli.poll() is None
    finally:
        conv.close()
    # restored endpoints are usable and the IPAM did not forget its leases
    c = node.add_pod()
    assert c.ip not in (a.ip, b.ip)
    assert c.ping(a.ip) and b.ping(c.ip)
    eps = {e["containerID"] for e in node.porin_json("endpoint", "list")}
    assert {a.container_id, b.container_id, c.container_id} <= eps


def test_sigterm_exits_cleanly_and_leaves_datapath_forwarding(fresh_node):
    node = fresh_node
    a, b = node.add_pod(), node.add_pod()
    assert node.stop_agent(signal.SIGTERM) == 0
    assert "porin-agent stopped" in node.log()
    assert not os.path.exists(node.cfg.socket)
    assert a.ping(b.ip) and b.ping(a.ip)
    node.start_agent()
    assert a.ping(b.ip)


def test_del_while_agent_down_is_finished_on_restart(fresh_node, snapshot, settled):
    node = fresh_node
    before = snapshot(node)
    a, b = node.add_pod(), node.add_pod()
    node.stop_agent()
    rc, out = node.cni("DEL", a.container_id, a.ns.path, a.ifname)
    assert (rc, out) == (0, None)
    host_if = a.result["interfaces"][0]["name"]
    assert host_if not in node.links(), "veth must go at once"
    assert not b.ping(a.ip)
    node.start_agent()
    wait_for(
        lambda: (
            a.container_id not in {e["containerID"] for e in node.porin_json("endpoint", "list")}
        ),
        10,
        "agent to finish the pending DEL",
    )
    a.ns.close()
    node.pods = {k: v for k, v in node.pods.items() if v is not a}
    node.del_pod(b)
    settled(node, before)


def test_endpoint_whose_netns_vanished_while_agent_down_is_cleaned(fresh_node, snapshot, settled):
    node = fresh_node
    before = snapshot(node)
    a = node.add_pod()
    node.stop_agent(signal.SIGKILL)
    a.ns.close()  # the kernel takes the veth pair with the namespace
    node.pods = {k: v for k, v in node.pods.items() if v is not a}
    node.start_agent()
    settled(node, before)


def test_half_created_endpoint_is_undone_on_restart(fresh_node, snapshot, settled):
    """An agent that died mid-ADD leaves a 'creating' record: the next start undoes it."""
    import json

    node = fresh_node
    before = snapshot(node)
    ns = Netns(kind="pod")
    try:
        node.stop_agent()
        rec = {
            "id": 4242,
            "container_id": "halfmade",
            "ifname": "eth0",
            "netns": ns.path,
            "network": "porin",
            "ipv4": "10.245.0.200/32",
            "gateway": "10.245.0.1",
            "mtu": 1500,
            "host_ifname": "lxchalfmade0001",
            "state": "creating",
        }
        Path(node.cfg.state_dir, "endpoints", "4242.json").write_text(json.dumps(rec))
        node.ns.exec(
            [
                "ip",
                "link",
                "add",
                "lxchalfmade0001",
                "type",
                "veth",
                "peer",
                "eth0",
                "netns",
                ns.path,
            ]
        )
        node.start_agent()
        assert "lxchalfmade0001" not in node.links()
        settled(node, before)
    finally:
        ns.close()


def test_second_agent_on_same_socket_refuses(fresh_node):
    node = fresh_node
    r = node.ns.exec(
        [str(VENV_BIN / "porin-agent"), "--config", node.config_path], check=False, timeout=60
    )
    assert r.returncode == 1
    assert "already serving" in r.stderr
    assert node.healthy()


def test_invalid_config_is_rejected_with_its_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("podCIDR: 10.0.0.0/24\nmtu: [1500\n")
    r = subprocess.run(
        [str(VENV_BIN / "porin-agent"), "--config", str(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "line" in r.stderr
    cfg.write_text("podCIDR: 10.0.0.0/33\n")
    r = subprocess.run(
        [str(VENV_BIN / "porin-agent"), "--config", str(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "podCIDR" in r.stderr
    # every problem at once, before anything is touched; a dotted bpffs root
    # used to stop start-up with a bare "Operation not permitted"
    root = f"/sys/fs/bpf/{tmp_path.name}.bad"
    cfg.write_text(f"bpffsRoot: {root}\nmtu: huge\ngateway: 10.9.9.1\nxdpMod: native\n")
    r = subprocess.run(
        [str(VENV_BIN / "porin-agent"), "--config", str(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "porin-agent: invalid configuration: 4 problems:"
    assert [x.split(":")[0].strip() for x in lines[1:5]] == [
        "xdpMod",
        "bpffsRoot",
        "gateway",
        "mtu",
    ]
    assert "did you mean xdpMode?" in lines[1] and "refuses names with a dot" in lines[2]
    assert not os.path.exists(root)


def test_uninstall_removes_everything(fresh_node):
    node = fresh_node
    a = node.add_pod()
    node.stop_agent()
    r = node.ns.exec([str(VENV_BIN / "porin-agent"), "--config", node.config_path, "--uninstall"])
    assert r.returncode == 0
    links = node.links()
    assert a.result["interfaces"][0]["name"] not in links
    assert "porin_host" not in links
    assert not os.path.exists(node.cfg.bpffs_root)
    assert not os.path.exists(node.cfg.state_dir)
    routes = node.ns.exec(["ip", "route"]).stdout
    assert "10.245.0.0/24" not in routes
    a.ns.close()
    node.pods.clear()
