"""Hostile clients of the agent's API (`hack/fuzz --api`).

Against a running agent (a lab node of its own, or the one a test gives):
malformed and truncated JSON, a wrong type at every place of every body
the API takes, bodies over the limit or lying about their length, unknown
routes and methods, request lines and headers http.server cannot parse,
slow clients that hold their connection open, and hundreds of requests at
once. Meanwhile a well-behaved client adds and deletes pods through the
CNI plugin. Checked:

- every hostile request gets a 4xx whose JSON body says what is wrong
  (never a 5xx, never a closed connection without an answer);
- nothing changed: services, endpoints, policies, identities and the
  prefilter are what they were (the well-behaved client's pods are gone
  again by then);
- every CNI ADD and DEL of the well-behaved client completed, each within
  `CNI_DEADLINE` seconds, while slow clients were holding connections;
- once the slow clients are dropped (daemon/api.py CLIENT_TIMEOUT) the
  agent holds as many file descriptors as before.
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from porinlab import Node, wait_for

from porin.daemon.api import API_WORKERS

CNI_DEADLINE = 15.0
SLOW_CLIENTS = 64
CONCURRENT = 300

SERVICE = {
    "frontend": "10.96.77.1:80",
    "protocol": "tcp",
    "type": "clusterip",
    "algorithm": "maglev",
    "affinityTimeout": 0,
    "backends": [{"address": "10.244.0.250:8080", "weight": 1, "state": "active"}],
}
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "fuzz", "namespace": "default"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "fuzz"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"protocol": "TCP", "port": 80}],
            }
        ],
    },
}
CNP = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "fuzz-cnp", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "fuzz"}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"role": "client"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
            }
        ],
        "egress": [{"toCIDR": ["192.0.2.0/24"]}, {"toEntities": ["world"]}],
        "ingressDeny": [
            {"fromCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.7/32"]}]}
        ],
    },
}
# where another JSON type is taken on purpose: a CiliumNetworkPolicy port is a
# string in Cilium's schema, and `port: 80` unquoted is what people write
LENIENT = {("documents", 0, "spec", "ingress", 0, "toPorts", 0, "ports", 0, "port")}
# (method, path, a valid body: its mutations are what is sent)
BODIES: list[tuple[str, str, Any]] = [
    (
        "PUT",
        "/v1/endpoints",
        {
            "containerID": "fuzzcontainer",
            "ifname": "eth0",
            "netns": "/var/run/netns/plfuzz-no-such-netns",
            "network": "porin",
            "labels": {"app": "fuzz"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        },
    ),
    ("POST", "/v1/endpoints/check", {"containerID": "fuzzc", "ifname": "eth0", "netns": "/x"}),
    (
        "POST",
        "/v1/gc",
        {"network": "plfuzz-net", "validAttachments": [{"containerID": "c", "ifname": "eth0"}]},
    ),
    ("PUT", "/v1/services", SERVICE),
    ("PUT", "/v1/services/4242", {**SERVICE, "id": 4242}),
    ("POST", "/v1/services/batch", {"upsert": [SERVICE], "delete": [4243]}),
    ("POST", "/v1/policies/apply", {"documents": [POLICY], "source": "fuzz"}),
    ("POST", "/v1/policies/delete", {"documents": [POLICY], "source": "fuzz"}),
    ("POST", "/v1/policies/apply", {"documents": [CNP], "source": "fuzz"}),
    ("PATCH", "/v1/endpoints/999999/labels", {"set": {"app": "x"}, "remove": ["role"]}),
    ("PUT", "/v1/prefilter", {"cidrs": ["192.0.2.0/24"]}),
    ("POST", "/v1/prefilter/delete", {"cidrs": ["192.0.2.0/24"]}),
    ("POST", "/v1/trace", {"from": "198.51.100.1", "to": "10.96.77.1", "port": 80}),
]
SNAPSHOT_PATHS = (
    "/v1/services",
    "/v1/endpoints",
    "/v1/policies",
    "/v1/identities",
    "/v1/prefilter",
)


@dataclass
class ApiResult:
    requests: int = 0
    by_kind: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    cni_ops: int = 0
    cni_slowest: float = 0.0
    fds_before: int = 0
    fds_after: int = 0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "kinds": dict(self.by_kind),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "cniOps": self.cni_ops,
            "cniSlowestSeconds": round(self.cni_slowest, 3),
            "agentFdsBefore": self.fds_before,
            "agentFdsAfter": self.fds_after,
            "failures": self.failures,
        }


# ---------------------------------------------------------------- transport


def raw(sock_path: str, data: bytes, timeout: float = 30.0) -> tuple[int, Any]:
    """Send `data` as it is; the reply's (status, JSON body or raw text).
    Status 0: the agent closed the connection without an answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: its answer may still be there
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, reply[:200]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body[:200]


def request(method: str, path: str, body: bytes | None, headers: str = "") -> bytes:
    body = body or b""
    head = f"{method} {path} HTTP/1.0\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return head.encode() + body


def get(sock_path: str, path: str) -> Any:
    status, body = raw(sock_path, request("GET", path, None))
    return status, body


# ---------------------------------------------------------------- hostile requests


def json_paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every place in a JSON value: keys of objects, indexes of lists."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, (*prefix, i))


def replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)
    cur = out
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = new
    return out


def _at(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def wrong_types(value: Any) -> Iterator[tuple[tuple, Any]]:
    """(path, body) with the value at path of another JSON type than it has."""
    others: dict[type, list[Any]] = {
        str: [7, 1.5, True, [], {}, ["x"]],
        int: ["80", 1.5, True, [], {}, -1, 1 << 70],
        bool: ["true", 1, [], {}],
        list: ["x", 3, {}, {"a": 1}, True],
        dict: ["x", 3, [], ["a"], True],
    }
    for path in json_paths(value):
        here = _at(value, path)
        for new in others.get(type(here), []):
            if path == () and isinstance(new, dict):
                continue  # an empty object is a type the top level accepts
            yield path, replaced(value, path, new)


def malformed(body: Any, rnd: random.Random) -> Iterator[bytes]:
    text = json.dumps(body).encode()
    for k in sorted({0, 1, 2, len(text) // 2, len(text) - 1, *rnd.sample(range(len(text)), 6)}):
        if 0 < k < len(text):
            yield text[:k]
    yield rnd.randbytes(64)
    yield b"\xff\xfe" + text  # not UTF-8
    yield b"[" * 100_000 + b"]" * 100_000  # nested beyond any parser's stack
    yield b'{"a": NaN, "b": Infinity}'
    yield b'{"n": ' + b"9" * 5000 + b"}"  # past Python's int-from-string limit
    yield text.replace(b"{", b"{\x00", 1)
    yield b"null"
    yield b'"just a string"'


def framing(rnd: random.Random) -> Iterator[tuple[str, bytes]]:
    """Requests whose HTTP itself is wrong."""
    yield "too big", b"PUT /v1/services HTTP/1.0\r\nContent-Length: %d\r\n\r\n{" % ((32 << 20) + 1)
    yield "negative length", b"PUT /v1/services HTTP/1.0\r\nContent-Length: -1\r\n\r\n{}"
    yield "bad length", b"PUT /v1/services HTTP/1.0\r\nContent-Length: ten\r\n\r\n{}"
    yield "short body", b'PUT /v1/services HTTP/1.0\r\nContent-Length: 500\r\n\r\n{"frontend":'
    yield "no request line", b"\r\n\r\n"
    yield "garbage line", rnd.randbytes(40).replace(b"\n", b"") + b"\r\n\r\n"
    yield "http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    yield "huge header", b"GET /v1/status HTTP/1.0\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
    yield "many headers", b"GET /v1/status HTTP/1.0\r\n" + b"X: a\r\n" * 200 + b"\r\n"
    yield "http/0.9", b"GET /v1/status\r\n"
    for method in ("FOO", "OPTIONS", "HEAD", "TRACE", "CONNECT", "get"):
        yield f"method {method}", request(method, "/v1/status", None)
    for path in ("/", "/v2/status", "/v1/services/abc", "/v1/services/1/2", "/../../etc/passwd",
                 "/v1/endpoints/99999999999999999999999", "/v1/" + "a" * 5000, "*"):  # fmt: skip
        yield f"path {path[:20]}", request("GET", path, None)
    yield "wrong method", request("DELETE", "/v1/healthz", None)
    yield (
        "query garbage",
        request("GET", "/v1/endpoints?containerID=%ff%00&ifname=" + "x" * 300, None),
    )


def hostile(rnd: random.Random) -> Iterator[tuple[str, bytes]]:
    for method, path, body in BODIES:
        for data in malformed(body, rnd):
            yield "malformed JSON", request(method, path, data)
        for where, bad in wrong_types(body):
            if where in LENIENT and isinstance(_at(bad, where), int):
                continue
            if path == "/v1/services/batch" and where == () and isinstance(bad, list):
                continue  # a bare list of services is the batch's other form
            yield "wrong type", request(method, path, json.dumps(bad).encode())
    yield from framing(rnd)


# ---------------------------------------------------------------- checks


def snapshot(sock_path: str) -> dict[str, Any]:
    return {p: get(sock_path, p) for p in SNAPSHOT_PATHS}


def agent_fds(node: Node) -> int:
    assert node.proc is not None
    return len(os.listdir(f"/proc/{agent_pid(node)}/fd"))


def agent_pid(node: Node) -> int:
    """The agent under `nsenter`: the child of the process porinlab started."""
    assert node.proc is not None
    kids = open(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read().split()
    return int(kids[0]) if kids else node.proc.pid


def check_reply(kind: str, data: bytes, status: int, body: Any, res: ApiResult) -> None:
    res.requests += 1
    res.by_kind[kind] += 1
    res.statuses[status] += 1
    ok = 400 <= status < 500 and isinstance(body, dict) and isinstance(body.get("error"), str)
    if not ok or not body["error"]:
        res.failures.append(f"{kind}: {status} {str(body)[:160]!r} for {data[:120]!r}")


class CniClient(threading.Thread):
    """A runtime adding and deleting pods while the hostile clients run."""

    def __init__(self, node: Node, res: ApiResult) -> None:
        super().__init__(daemon=True)
        self.node, self.res = node, res
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                pod = self.node.add_pod()
                t1 = time.monotonic()
                rc, out = self.node.del_pod(pod)
                t2 = time.monotonic()
                if rc != 0:
                    raise RuntimeError(f"CNI DEL failed: {out}")
                self.res.cni_ops += 2
                self.res.cni_slowest = max(self.res.cni_slowest, t1 - t0, t2 - t1)
                if max(t1 - t0, t2 - t1) > CNI_DEADLINE:
                    raise RuntimeError(f"a CNI call took {max(t1 - t0, t2 - t1):.1f} s")
        except Exception as e:  # reported by the harness
            self.error = str(e)


def hold_slow_clients(sock_path: str, n: int) -> list[socket.socket]:
    """Connections that never finish their request: half send nothing, half
    a request line and part of a body."""
    out = []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        if i % 2:
            s.sendall(b"PUT /v1/services HTTP/1.0\r\nContent-Length: 100\r\n\r\n{")
        out.append(s)
    return out


def fuzz_api(node: Node, seed: int, log: Callable[[str], None] = print) -> ApiResult:
    """Run every hostile client against `node`'s agent."""
    rnd = random.Random(seed)
    sock = node.cfg.socket
    res = ApiResult()
    # one pod first: what the agent opens once for its first endpoint is no leak
    node.del_pod(node.add_pod())
    before = snapshot(sock)
    res.fds_before = agent_fds(node)
    cni = CniClient(node, res)
    slow = hold_slow_clients(sock, SLOW_CLIENTS)
    cni.start()
    try:
        cases = list(hostile(rnd))
        for kind, data in cases:
            status, body = raw(sock, data)
            check_reply(kind, data, status, body, res)
        log(f"api: {len(cases)} hostile requests one at a time, {SLOW_CLIENTS} slow clients held")
        # hundreds at once, mixed with what a monitoring client reads
        picks = [rnd.choice(cases) for _ in range(CONCURRENT)]
        replies: list[tuple[str, bytes, int, Any]] = []
        lock = threading.Lock()

        def one(kind: str, data: bytes) -> None:
            status, body = raw(sock, data)
            with lock:
                replies.append((kind, data, status, body))

        threads = [threading.Thread(target=one, args=p) for p in picks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for kind, data, status, body in replies:
            if status == 503 and isinstance(body, dict) and "retry" in body.get("error", ""):
                status = 429  # refused for load: an answer, counted as a 4xx-like refusal
            check_reply(f"concurrent {kind}", data, status, body, res)
        if len(replies) != CONCURRENT:
            res.failures.append(f"{CONCURRENT - len(replies)} concurrent requests never answered")
        log(f"api: {CONCURRENT} at once")
    finally:
        cni.stop.set()
        cni.join(120)
        for s in slow:
            s.close()
    if cni.error:
        res.failures.append(f"the well-behaved CNI client failed: {cni.error}")
    if res.cni_ops == 0:
        res.failures.append("no CNI ADD completed while the hostile clients ran")
    after = snapshot(sock)
    for path in SNAPSHOT_PATHS:
        if before[path] != after[path]:
            res.failures.append(
                f"{path} changed: {str(before[path])[:200]} -> {str(after[path])[:200]}"
            )
    # a connection's thread goes with its connection; each of the API's
    # handler threads may keep one netlink socket (daemon/api.py API_WORKERS)
    bound = res.fds_before + API_WORKERS
    try:
        wait_for(lambda: agent_fds(node) <= bound, timeout=30, what="agent fds back")
    except TimeoutError:
        pass
    res.fds_after = agent_fds(node)
    if res.fds_after > bound:
        res.failures.append(
            f"the agent holds {res.fds_after} fds, {res.fds_before} before the hostile clients"
        )
    # and they do not grow with the requests: 20 more pods stay within the
    # bound (a handler thread that had served nothing yet may take its socket
    # now; a leak of one per ADD would be 20 over)
    for _ in range(20):
        node.del_pod(node.add_pod())
    if agent_fds(node) > bound:
        res.failures.append(
            f"20 pods later the agent holds {agent_fds(node)} fds, more than {bound} "
            f"({res.fds_after} after the hostile clients)"
        )
    return res


def standalone(seed: int, log: Callable[[str], None]) -> ApiResult:
    """On a lab node of its own."""
    node = Node(pod_cidr="10.249.0.0/24")
    try:
        node.start_agent()
        return fuzz_api(node, seed, log)
    finally:
        node.close()
