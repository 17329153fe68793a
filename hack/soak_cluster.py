"""hack/soak on several nodes: a real etcd, its outages, what the kvstore holds.

With `--nodes N` (N > 1) the soak's pods come and go on N lab nodes sharing a
real etcd over VXLAN. Two anchor pods on different nodes hold a TCP
conversation (a message every 50 ms) for the whole run, and every
`--outage-every` cycles etcd is stopped for `--outage` seconds while pods
are added and deleted on every node and services and policies are created,
changed and deleted through the CLI. Then:

  - forwarding never stopped: the conversation went on through the outage
    (its longest silence is reported);
  - every change made meanwhile was taken and said to be pending;
  - after etcd returns, every node converges on the same state within
    CONVERGE_S (services, policies, the kvstore's ipcache keys, each node's
    ipcache map), the time is reported, and nothing deleted during the
    outage comes back once every node has reconnected and resynced.

The soak's checks then also cover the kvstore: no ipcache key without its
pod, every live pod's key names its node and identity, and every node's
ipcache map knows every other node's live pods and no gone one.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from porinlab import CONVERSATION, Etcd, Node, Pod, Underlay, wait_for

if TYPE_CHECKING:
    from soak import Soak

ETCD_IP = "198.18.0.2"
CLUSTER_CIDR = "10.248.0.0/16"
CONVERGE_S = 10.0  # the promise: every node has every change this soon after etcd is back
SERVICE_IDS = range(900, 916)  # the soak's own services
POLICY_NS = "soak"

ECHO_SERVER = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(8); print("ready", flush=True)
def serve(c):
    while (d := c.recv(100)):
        c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@dataclass
class OutageResult:
    seconds: float
    ops: Counter = field(default_factory=Counter)
    converge_s: float | None = None
    longest_silence_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "ops": dict(self.ops),
            "convergeSeconds": None if self.converge_s is None else round(self.converge_s, 2),
            "longestSilenceSeconds": round(self.longest_silence_s, 2),
        }


class Conversation:
    """A TCP conversation between two pods; a thread notes when each answer came."""

    def __init__(self, client: Pod, server: Pod) -> None:
        self.server = server.popen(
            ["python3", "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True
        )
        assert self.server.stdout is not None
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("the anchor pod's echo server did not start")
        self.client = client.popen(
            ["python3", "-c", CONVERSATION, server.ip],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.count = 0
        self.last = time.monotonic()
        self.longest = 0.0  # the longest silence since reset()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.client.stdout is not None
        for line in self.client.stdout:
            now = time.monotonic()
            with self._lock:
                self.longest = max(self.longest, now - self.last)
                self.last = now
                self.count = int(line)

    def reset(self) -> None:
        with self._lock:
            self.longest = 0.0

    def silence(self) -> float:
        """The longest silence since reset(), counting the current one."""
        with self._lock:
            return max(self.longest, time.monotonic() - self.last)

    def alive(self) -> bool:
        return self.client.poll() is None

    def error(self) -> str:
        if self.alive():
            return ""
        assert self.client.stderr is not None
        return self.client.stderr.read()[-500:]

    def close(self) -> None:
        for p in (self.client, self.server):
            if p.poll() is None:
                p.kill()
            p.wait()


class Lab:
    """The node network, a real etcd and N nodes."""

    def __init__(self, n: int) -> None:
        self.underlay = Underlay()
        self.etcd = Etcd(self.underlay, ETCD_IP)
        self.nodes: list[Node] = []
        self.conversation: Conversation | None = None
        try:
            self.etcd.start()
            for i in range(1, n + 1):
                self.nodes.append(
                    Node(
                        pod_cidr=f"10.248.{i}.0/24",
                        underlay=self.underlay,
                        node_ip=f"198.18.0.{10 + i}",
                        kvstore={"endpoints": [self.etcd.endpoint]},
                        tunnel="vxlan",
                        clusterCIDR=CLUSTER_CIDR,
                    )
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conversation is not None:
            self.conversation.close()
        for node in self.nodes:
            try:
                node.close()
            except Exception:
                pass
        self.etcd.close()
        self.underlay.close()

    def kvstore_ipcache(self) -> dict[str, dict[str, Any]]:
        """The kvstore's ipcache keys, read with etcdctl (not through an agent)."""
        r = self.etcd.ns.exec(
            ["etcdctl", f"--endpoints={self.etcd.endpoint}", "get", "--prefix", "/porin/ipcache/"],
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        lines = r.stdout.splitlines()
        return {
            k[len("/porin/ipcache/") :]: json.loads(v)
            for k, v in zip(lines[::2], lines[1::2], strict=True)
        }


def services(node: Node) -> dict[int, list[str]]:
    return {
        s["id"]: sorted(b["address"] for b in s["backends"])
        for s in node.porin_json("service", "list")
        if s["id"] in SERVICE_IDS
    }


def policies(node: Node) -> set[str]:
    return {p["name"] for p in node.porin_json("policy", "list") if p["namespace"] == POLICY_NS}


class Outage:
    """One kvstore outage fault of the soak."""

    def __init__(self, soak: Soak, seconds: float) -> None:
        assert soak.lab is not None
        self.soak = soak
        self.lab = soak.lab
        self.rnd = soak.rnd
        self.res = OutageResult(seconds)
        self._n = 0

    def run(self) -> OutageResult:
        soak, lab = self.soak, self.lab
        conv = lab.conversation
        assert conv is not None
        lab.etcd.stop()
        conv.reset()
        for node in soak.nodes:
            wait_for(lambda n=node: _kv_state(n) == "degraded", 30, f"{node.ns.name} to notice")
        deadline = time.monotonic() + self.res.seconds
        kinds = ["add", "del", "svc-update", "svc-delete", "policy-apply", "policy-delete"]
        first = kinds[:]  # each kind once (in a drawn order), then drawn until the end
        self.rnd.shuffle(first)
        while first or time.monotonic() < deadline:
            op = first.pop() if first else self.rnd.choice(kinds + ["add"])
            if getattr(self, "_" + op.replace("-", "_"))():
                self.res.ops[op] += 1
        if not conv.alive():
            soak.res.errors.append(f"the conversation broke during the outage: {conv.error()}")
        lab.etcd.start()
        back = time.monotonic()
        try:
            wait_for(self.converged, 60, "every node to converge after the outage")
            self.res.converge_s = time.monotonic() - back
        except TimeoutError:
            soak.res.errors.append(f"no convergence 60 s after etcd returned: {self.diff()[:8]}")
            return self.res
        if self.res.converge_s > CONVERGE_S:
            soak.res.errors.append(f"converged {self.res.converge_s:.1f} s after etcd returned")
        for node in soak.nodes:
            wait_for(lambda n=node: _kv_state(n) == "connected", 60, f"{node.ns.name} to reconnect")
        # every node resynced: still nothing that was deleted came back
        if not self.converged():
            soak.res.errors.append(f"after the resync: {self.diff()}")
        self.res.longest_silence_s = conv.silence()
        if not conv.alive():
            soak.res.errors.append(f"the conversation broke after the outage: {conv.error()}")
        return self.res

    # ---------- what changes while etcd is away ----------

    def _node(self) -> Node:
        return self.rnd.choice(self.soak.nodes)

    def _pending(self, r: subprocess.CompletedProcess, what: str) -> bool:
        if r.returncode != 0:
            self.soak.res.errors.append(f"outage: {what} refused: {r.stderr.strip()}")
            return False
        if "pending" not in r.stderr:
            self.soak.res.errors.append(f"outage: {what} not said to be pending: {r.stderr!r}")
        return True

    def _add(self) -> bool:
        soak = self.soak
        pod = soak._new_pod(self._node())
        soak._add(pod)
        soak._keep(pod)
        return True

    def _del(self) -> bool:
        soak = self.soak
        if not soak.live:
            return False
        soak._del(soak.live.pop(self.rnd.randrange(len(soak.live))))
        return True

    def _owner(self, key: int | str) -> Node:
        """The node through which every change of one service or policy goes.

        Two nodes cut off from each other that both change one object leave no
        well-defined result (their writes reach etcd in reconnection order), and
        one that never learned of an object made on another cannot delete it:
        the soak changes each object through one node, a different one for each."""
        nodes = self.soak.nodes
        if isinstance(key, int):
            return nodes[key % len(nodes)]
        return nodes[int(key.rsplit("-", 1)[1]) % len(nodes)]

    def _svc_update(self) -> bool:
        sid = self.rnd.choice(SERVICE_IDS)
        backends = sorted(
            {f"10.248.{self.rnd.randint(1, 250)}.{self.rnd.randint(2, 250)}:80" for _ in range(2)}
        )
        r = self._owner(sid).porin(
            "service", "update", "--id", str(sid), "--frontend", f"10.96.90.{sid - 800}:80",
            "--backends", ",".join(backends), check=False,
        )  # fmt: skip
        if self._pending(r, f"service {sid} update"):
            self.soak.services[sid] = backends
            return True
        return False

    def _svc_delete(self) -> bool:
        if not self.soak.services:
            return False
        sid = self.rnd.choice(sorted(self.soak.services))
        r = self._owner(sid).porin("service", "delete", str(sid), check=False)
        if self._pending(r, f"service {sid} delete"):
            del self.soak.services[sid]
            return True
        return False

    def _policy_apply(self) -> bool:
        self._n += 1
        name = f"soak-{self.soak.res.cycles}-{self._n}"
        node = self._owner(name)
        path = Path(node.workdir) / f"{name}.yaml"
        path.write_text(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {POLICY_NS}}}\n"
            # selects no pod: the policies change state, not the soak's reachability
            "spec: {podSelector: {matchLabels: {app: none}}, policyTypes: [Ingress]}\n"
        )
        r = node.porin("apply", "-f", str(path), check=False)
        path.unlink()
        if self._pending(r, f"policy {name} apply"):
            self.soak.policies.add(name)
            return True
        return False

    def _policy_delete(self) -> bool:
        if not self.soak.policies:
            return False
        name = self.rnd.choice(sorted(self.soak.policies))
        r = self._owner(name).porin("policy", "delete", f"{POLICY_NS}/{name}", check=False)
        if self._pending(r, f"policy {name} delete"):
            self.soak.policies.discard(name)
            return True
        return False

    # ---------- convergence ----------

    def diff(self) -> list[str]:
        return state_diff(self.soak)

    def converged(self) -> bool:
        return not self.diff()


def _kv_state(node: Node) -> str:
    return node.porin_json("status")["kvstore"]["state"]


def state_diff(soak: Soak) -> list[str]:
    """How the nodes and the kvstore differ from what the soak did (empty: converged)."""
    lab = soak.lab
    assert lab is not None
    out: list[str] = []
    for node in soak.nodes:
        got = services(node)
        if got != soak.services:
            out.append(f"{node.ns.name} services {got}, want {soak.services}")
        pol = policies(node)
        if pol != soak.policies:
            out.append(f"{node.ns.name} policies {sorted(pol)}, want {sorted(soak.policies)}")
    out += ipcache_diff(soak, lab.kvstore_ipcache())
    return out


def ipcache_diff(soak: Soak, kv: dict[str, dict[str, Any]]) -> list[str]:
    """The kvstore's ipcache keys and every node's ipcache map against the live pods."""
    out: list[str] = []
    pods = {p.ip: p for p in soak.all_pods() if p.result}
    identity = {}
    for node in soak.nodes:
        for e in node.porin_json("endpoint", "list"):
            identity[e["ipv4"].split("/")[0]] = (node.ns.name, e.get("identity"))
    for ip, v in kv.items():
        if ip not in pods:
            out.append(f"kvstore ipcache key {ip} without its pod")
        elif (v.get("node"), v.get("identity")) != identity.get(ip):
            out.append(f"kvstore ipcache {ip}: {v}, its node says {identity.get(ip)}")
    for ip in set(pods) - set(kv):
        out.append(f"kvstore has no ipcache key for live pod {ip}")
    gateways = {n.porin_json("status")["gateway"] for n in soak.nodes}
    for node in soak.nodes:
        cache = {e["prefix"]: e for e in node.porin_json("bpf", "ipcache", "list")}
        for prefix in cache:
            ip = prefix.split("/")[0]
            if prefix.endswith("/32") and ip.startswith("10.248.") and ip not in pods:
                if ip not in gateways:
                    out.append(f"{node.ns.name} ipcache map entry {prefix} without its pod")
        for ip, pod in pods.items():
            if f"{ip}/32" not in cache:
                out.append(f"{node.ns.name} ipcache map lacks {pod.node.ns.name}'s pod {ip}")
    return out
