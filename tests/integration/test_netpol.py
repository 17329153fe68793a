"""Network policy across three nodes: the upstream Kubernetes NetworkPolicy
e2e model (test/e2e/network/netpol): namespaces x, y, z with pods a, b, c
each, spread over the nodes, every pod serving TCP and UDP on 80 and 81.
Each case applies policies with `porin apply` on one node and probes every
pod from every pod until the matrix is the expected one (a deadline, no
sleeps), in VXLAN and IPIP mode; expectations are written per case, as the
upstream truth tables are, not derived from Porin's compiler.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable

import pytest
from porinlab import Etcd, Node, Underlay, start_agents, wait_for

ETCD_IP = "198.18.0.2"
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
MODEL = [(ns, p) for ns in NAMESPACES for p in PODS]
CONVERGE = 15.0  # deadline for a matrix (propagation through etcd to every node)

SERVER = """
import socket, sys, threading
name = sys.argv[1].encode()
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128)
    while True:
        c, _ = s.accept()
        def serve(c=c):
            try:
                while True:
                    d = c.recv(100)
                    if not d: break
                    c.sendall(name)
            except OSError:
                pass
            c.close()
        threading.Thread(target=serve, daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(100); s.sendto(name, a)
for p in (80, 81):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

PROBER = """
import json, socket, sys, threading
proto, port = sys.argv[1], int(sys.argv[2])
out = {}
def probe(ip):
    ok = False
    for _ in range(2):
        try:
            if proto == "tcp":
                c = socket.create_connection((ip, port), timeout=0.7)
                c.settimeout(0.7); c.sendall(b"x"); ok = bool(c.recv(100)); c.close()
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.4)
                s.sendto(b"x", (ip, port)); ok = bool(s.recvfrom(100)[0]); s.close()
        except OSError:
            ok = False
        if ok: break
    out[ip] = ok
ts = [threading.Thread(target=probe, args=(ip,)) for ip in sys.argv[3:]]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""

HOLD = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 80), timeout=3)
n = 0
while True:
    try:
        c.settimeout(1.0); c.sendall(b"x"); assert c.recv(100)
    except (OSError, AssertionError):
        print("cut", flush=True); break
    n += 1; print(n, flush=True); time.sleep(0.05)
"""


class Model:
    def __init__(self, tunnel: str) -> None:
        self.underlay = Underlay()
        self.etcd = Etcd(self.underlay, ETCD_IP)
        self.nodes: list[Node] = []
        self.pods: dict[tuple[str, str], object] = {}
        self.owner: dict[tuple[str, str], int] = {}  # pod -> index of its node
        self.procs: list[subprocess.Popen] = []
        self.tunnel = tunnel

    def start(self) -> None:
        self.etcd.start()
        for i in (1, 2, 3):
            n = Node(
                pod_cidr=f"10.244.{i}.0/24",
                underlay=self.underlay,
                node_ip=f"198.18.0.{10 + i}",
                kvstore={"endpoints": [self.etcd.endpoint]},
                tunnel=self.tunnel,
                clusterCIDR="10.244.0.0/16",
            )
            self.nodes.append(n)
        start_agents(self.nodes)
        ports = [
            {"name": f"serve-{p}-{proto.lower()}", "containerPort": p, "protocol": proto}
            for p in (80, 81)
            for proto in ("TCP", "UDP")
        ]
        for k, (ns, name) in enumerate(MODEL):
            node = self.nodes[k % 3]
            pod = node.add_pod(name, namespace=ns, labels={"pod": name}, ports=ports)
            self.pods[(ns, name)] = pod
            self.owner[(ns, name)] = k % 3
            p = pod.popen(
                ["python3", "-c", SERVER, f"{ns}/{name}"], stdout=subprocess.PIPE, text=True
            )
            assert p.stdout.readline().strip() == "ready"
            self.procs.append(p)
        ips = {p.ip for p in self.pods.values()}
        for n in self.nodes:
            wait_for(
                lambda n=n: (
                    ips
                    <= {e["prefix"].split("/")[0] for e in n.porin_json("bpf", "ipcache", "list")}
                ),
                20,
                "every node to learn every pod",
            )
        self.apply(
            "".join(
                f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
                for ns in NAMESPACES
            )
        )

    def ip(self, ns: str, name: str) -> str:
        return self.pods[(ns, name)].ip  # type: ignore[attr-defined]

    def porin(self, *args: str, node: int = 0, check: bool = True) -> subprocess.CompletedProcess:
        return self.nodes[node].porin(*args, check=check)

    def apply(self, text: str, node: int = 0) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(text)
            f.flush()
            r = self.porin("apply", "-f", f.name, node=node, check=False)
        assert r.returncode == 0, r.stderr

    def reset(self) -> None:
        for n in self.nodes:  # a test that failed with an agent stopped leaves it so
            if n.proc is None or n.proc.poll() is not None:
                n.start_agent()
        self.porin("policy", "delete", "--all")

    def probe(self, proto: str, port: int) -> dict[tuple[tuple[str, str], tuple[str, str]], bool]:
        """Every pod to every pod at once (one prober per source)."""
        targets = [self.ip(*d) for d in MODEL]
        procs = {
            src: self.pods[src].popen(  # type: ignore[attr-defined]
                ["python3", "-c", PROBER, proto, str(port), *targets],
                stdout=subprocess.PIPE,
                text=True,
            )
            for src in MODEL
        }
        out = {}
        for src, p in procs.items():
            got = json.loads(p.communicate(timeout=30)[0])
            for dst in MODEL:
                out[(src, dst)] = got[self.ip(*dst)]
        return out

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for n in self.nodes:
            n.close()
        self.etcd.close()
        self.underlay.close()


Expect = Callable[[tuple[str, str], tuple[str, str]], bool]


def table(got: dict, want: Expect) -> str:
    lines = ["      " + " ".join(f"{d[0]}/{d[1]}" for d in MODEL)]
    for s in MODEL:
        row = []
        for d in MODEL:
            g, w = got[(s, d)], want(s, d)
            row.append((" ." if g else " X") + (" " if g == w else "!") + " ")
        lines.append(f"{s[0]}/{s[1]}  " + "".join(row))
    return "\n".join(lines) + "\n(. reachable, X blocked, ! differs from expected)"


def check(model: Model, want: Expect, proto: str = "tcp", port: int = 80) -> float:
    """Probe until the matrix is `want` (deadline CONVERGE); returns seconds taken.
    A pod reaches itself over its own loopback, which no policy sees (upstream's
    AllowLoopback)."""
    expected = want

    def want(s: tuple[str, str], d: tuple[str, str]) -> bool:
        return s == d or expected(s, d)

    start = time.monotonic()
    last: dict = {}
    while True:
        last = model.probe(proto, port)
        if all(last[(s, d)] == want(s, d) for s in MODEL for d in MODEL):
            return time.monotonic() - start
        if time.monotonic() - start > CONVERGE:
            raise AssertionError(f"{proto}/{port} matrix did not converge:\n{table(last, want)}")


def everything(s: tuple[str, str], d: tuple[str, str]) -> bool:
    return True


TUNNELS = ["vxlan", "ipip"]
# What the matrix shows does not depend on the tunnel: every case runs over
# VXLAN, and over IPIP (where the sender's identity comes from the ipcache,
# not the tunnel key) one of each kind: peers by pod, namespace and both,
# named ports, egress, deny, CIDR.
IPIP_CASES = {
    "deny-all-ingress-in-x",
    "x-a-from-pod-b-OR-namespace-y",
    "x-a-named-port-serve-81-tcp",
    "x-a-egress-to-namespace-y-only",
    "cilium-deny-wins-over-allow",
}
both_tunnels = pytest.mark.parametrize("model", TUNNELS, indirect=True, scope="module")
vxlan = pytest.mark.parametrize("model", ["vxlan"], indirect=True, scope="module")


@pytest.fixture(scope="module")
def model(request):
    m = Model(request.param)
    try:
        m.start()
        yield m
    finally:
        m.close()


@pytest.fixture
def np(model):
    model.reset()
    check(model, everything)
    yield model
    model.reset()


NP = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"


def policy(name: str, ns: str, spec: str) -> str:
    return NP + f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"


# (name, YAML, [(proto, port, expectation)]) -- the upstream cases and a few of Porin's
CASES: list[tuple[str, str, list[tuple[str, int, Expect]]]] = [
    (
        "deny-all-ingress-in-x",
        policy("deny-all", "x", "  podSelector: {}"),
        [("tcp", 80, lambda s, d: d[0] != "x"), ("udp", 81, lambda s, d: d[0] != "x")],
    ),
    (
        "allow-all-ingress-in-x",
        policy("allow-all", "x", "  podSelector: {}\n  ingress: [{}]"),
        [("tcp", 80, everything)],
    ),
    (
        "x-a-from-pod-b-of-x",
        policy(
            "a-from-b",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a") or s == ("x", "b"))],
    ),
    (
        "x-a-from-namespace-y",
        policy(
            "a-from-y",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a") or s[0] == "y")],
    ),
    (
        "x-a-from-namespaces-not-x",
        policy(
            "a-not-x",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchExpressions:"
            " [{key: ns, operator: NotIn, values: [x]}]}}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a") or s[0] != "x")],
    ),
    (
        "x-a-from-pod-b-AND-namespace-y",
        policy(
            "a-from-y-b",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}},"
            " podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a") or s == ("y", "b"))],
    ),
    (
        "x-a-from-pod-b-OR-namespace-y",
        policy(
            "a-from-b-or-y",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}},"
            " {podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a") or s[0] == "y" or s == ("x", "b"))],
    ),
    (
        "x-a-from-everyone-on-port-81-only",
        policy(
            "a-81",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a")), ("tcp", 81, everything)],
    ),
    (
        "x-a-named-port-serve-81-tcp",
        policy(
            "a-named",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: serve-81-tcp}]}]",
        ),
        [("tcp", 81, everything), ("udp", 81, lambda s, d: d != ("x", "a"))],
    ),
    (
        "x-a-port-range-80-81",
        policy(
            "a-range",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}],"
            " ports: [{port: 80, endPort: 81}]}]",
        ),
        [
            ("tcp", 80, lambda s, d: d != ("x", "a") or s[0] == "z"),
            ("tcp", 81, lambda s, d: d != ("x", "a") or s[0] == "z"),
        ],
    ),
    (
        "x-a-udp-only-does-not-allow-tcp",
        policy(
            "a-udp",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP, port: 80}]}]",
        ),
        [("udp", 80, everything), ("tcp", 80, lambda s, d: d != ("x", "a"))],
    ),
    (
        "x-a-sctp-only-allows-neither-tcp-nor-udp",
        policy(
            "a-sctp",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: SCTP, port: 80}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a")), ("udp", 80, lambda s, d: d != ("x", "a"))],
    ),
    (
        "deny-all-egress-from-x",
        policy("deny-egress", "x", "  podSelector: {}\n  policyTypes: [Egress]"),
        [("tcp", 80, lambda s, d: s[0] != "x")],
    ),
    (
        "x-a-egress-to-namespace-y-only",
        policy(
            "a-to-y",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
            "  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
        ),
        [("tcp", 80, lambda s, d: s != ("x", "a") or d[0] == "y")],
    ),
    (
        "x-a-egress-to-pod-b-in-every-namespace",
        policy(
            "a-to-b",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
            "  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        [("tcp", 80, lambda s, d: s != ("x", "a") or d[1] == "b")],
    ),
    (
        "x-a-egress-on-named-port-81",
        policy(
            "a-to-81",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
            "  egress: [{ports: [{port: serve-81-tcp}]}]",
        ),
        [("tcp", 81, everything), ("tcp", 80, lambda s, d: s != ("x", "a"))],
    ),
    (
        "both-directions-on-x-a",
        policy(
            "a-both",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n"
            "  ingress: [{from: [{podSelector: {}}]}]\n  egress: [{to: [{podSelector: {}}]}]",
        ),
        [
            (
                "tcp",
                80,
                lambda s, d: (d != ("x", "a") or s[0] == "x") and (s != ("x", "a") or d[0] == "x"),
            )
        ],
    ),
    (
        "union-of-two-policies",
        policy(
            "p1",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        )
        + policy(
            "p2",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]",
        ),
        [("tcp", 80, lambda s, d: d != ("x", "a") or s in (("x", "b"), ("z", "c")))],
    ),
    (
        "deny-all-everywhere-then-allow-within-namespaces",
        "".join(
            policy(f"iso-{ns}", ns, "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]")
            for ns in NAMESPACES
        ),
        [("tcp", 80, lambda s, d: s[0] == d[0])],
    ),
    (
        "cilium-endpoints-in-the-policy-namespace",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c1, namespace: x}\n"
        "spec:\n  endpointSelector: {matchLabels: {pod: a}}\n"
        "  ingress: [{fromEndpoints: [{matchLabels: {pod: c}}]}]\n",
        [("tcp", 80, lambda s, d: d != ("x", "a") or s == ("x", "c"))],
    ),
    (
        "cilium-deny-wins-over-allow",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c2, namespace: x}\n"
        "spec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [cluster]}]\n"
        "  ingressDeny: [{fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': y}}],"
        " toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]\n",
        [("tcp", 80, lambda s, d: d[0] != "x" or s[0] != "y"), ("tcp", 81, everything)],
    ),
    (
        "cilium-clusterwide-ingress-for-pod-c-from-a",
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cc}\n"
        "spec:\n  endpointSelector: {matchLabels: {pod: c}}\n"
        "  ingress: [{fromEndpoints: [{matchLabels: {pod: a}}], toPorts: [{ports: [{port: '80'}]}]}]\n",
        [
            ("tcp", 80, lambda s, d: d[1] != "c" or s[1] == "a"),
            ("udp", 80, lambda s, d: d[1] != "c" or s[1] == "a"),
        ],
    ),
]


def ipblock_case(model: Model) -> tuple[str, Expect]:
    yb = model.ip("y", "b")
    text = policy(
        "a-ipblock",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n"
        f"  ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{yb}/32]}}}}]}}]",
    )
    return text, lambda s, d: d != ("x", "a") or s != ("y", "b")


def egress_ipblock_case(model: Model) -> tuple[str, Expect]:
    zc = model.ip("z", "c")
    text = policy(
        "a-egress-ipblock",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
        f"  egress: [{{to: [{{ipBlock: {{cidr: {zc}/32}}}}]}}]",
    )
    return text, lambda s, d: s != ("x", "a") or d == ("z", "c")


@pytest.mark.parametrize(
    ("model", "case"),
    [(t, c) for t in TUNNELS for c in CASES if t == "vxlan" or c[0] in IPIP_CASES],
    ids=[f"{t}-{c[0]}" for t in TUNNELS for c in CASES if t == "vxlan" or c[0] in IPIP_CASES],
    indirect=["model"],
    scope="module",
)
def test_matrix(np, case):
    name, text, probes = case
    np.apply(text, node=CASES.index(case) % 3)  # any node
    for proto, port, want in probes:
        check(np, want, proto, port)


@pytest.mark.parametrize("which", [ipblock_case, egress_ipblock_case])
@both_tunnels
def test_ipblocks_match_pod_addresses(np, which):
    text, want = which(np)
    np.apply(text, node=1)
    check(np, want)


@vxlan
def test_namespace_labels_and_pod_labels_move_the_matrix(np):
    np.apply(
        policy(
            "a-from-team",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
        )
    )
    check(np, lambda s, d: d != ("x", "a"))
    np.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: z, labels: {ns: z, team: blue}}\n")
    took = check(np, lambda s, d: d != ("x", "a") or s[0] == "z")
    print(f"namespace label change converged in {took:.2f}s")
    # a running pod's labels: y/b gets role=trusted on its node; x/a's node follows
    target = np.owner[("x", "a")]
    applied_on = (target + 1) % 3
    start = time.monotonic()
    np.apply(
        policy(
            "a-from-role",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n"
            "  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: trusted}}}]}]",
        ),
        node=applied_on,
    )
    wait_for(lambda: policy_rule_present(np, target, "a-from-role"), 10, "the policy on x/a's node")
    print(
        f"policy applied on another node programmed on x/a's node {time.monotonic() - start:.2f}s after the apply began"
    )
    owner = np.owner[("y", "b")]
    start = time.monotonic()
    np.porin("endpoint", "label", "y/b", "--set", "role=trusted", node=owner)
    wait_for(
        lambda: any("role=trusted" in e["labels"] for e in entries_of(np, target)),
        10,
        "x/a's node to see the new identity",
    )
    print(
        f"relabel on node {owner} programmed on node {target} {time.monotonic() - start:.2f}s after the command began"
    )
    took = check(np, lambda s, d: d != ("x", "a") or s[0] == "z" or s == ("y", "b"))
    print(f"pod label change converged in {took:.2f}s (probe rounds included)")
    np.porin("endpoint", "label", "y/b", "--remove", "role", node=owner)
    check(np, lambda s, d: d != ("x", "a") or s[0] == "z")
    np.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: z, labels: {ns: z}}\n")


def entries_of(model: Model, node: int) -> list[dict]:
    return json.loads(model.porin("bpf", "policy", "get", "x/a", "-o", "json", node=node).stdout)


def policy_rule_present(model: Model, node: int, name: str) -> bool:
    """The policy selects x/a on that node (its endpoint's entries are programmed)."""
    listed = json.loads(model.porin("policy", "list", "-o", "json", node=node).stdout)
    return any(p["name"] == name and p["selectedEndpoints"] for p in listed)


@both_tunnels
def test_an_established_connection_is_cut_when_its_allow_goes(np):
    np.apply(
        policy(
            "a-from-b",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        )
    )
    check(np, lambda s, d: d != ("x", "a") or s == ("x", "b"))
    xb = np.pods[("x", "b")]
    hold = xb.popen(["python3", "-c", HOLD, np.ip("x", "a")], stdout=subprocess.PIPE, text=True)  # type: ignore[attr-defined]
    try:
        assert int(hold.stdout.readline()) >= 1
        # an unrelated change does not disturb it
        np.apply(policy("other", "y", "  podSelector: {}"))
        first = int(hold.stdout.readline())
        for _ in range(10):
            n = int(hold.stdout.readline())
        assert n >= first + 9
        np.apply(
            policy(
                "a-from-b",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]",
            )
        )
        cut_at = time.monotonic()
        while True:
            line = hold.stdout.readline().strip()
            if line == "cut" or not line:
                break
        print(f"cut {time.monotonic() - cut_at:.2f}s after the apply returned")
        assert line == "cut"
    finally:
        hold.kill()
        hold.wait()


@vxlan
def test_policy_commands_and_attribution(np):
    np.apply(policy("deny-all", "x", "  podSelector: {}"))
    check(np, lambda s, d: d[0] != "x")
    listed = json.loads(np.porin("policy", "list", "-o", "json").stdout)
    assert [(p["namespace"], p["name"], p["kind"]) for p in listed] == [
        ("x", "deny-all", "NetworkPolicy")
    ]
    # explain on the node of x/a, from y/a
    owner = np.owner[("x", "a")]
    res = json.loads(
        np.porin(
            "policy",
            "explain",
            "--from",
            np.ip("y", "a"),
            "--to",
            "x/a",
            "--port",
            "80/tcp",
            "-o",
            "json",
            node=owner,
        ).stdout
    )
    assert res["verdict"] == "DENIED"
    (ingress,) = [c for c in res["checks"] if c["direction"] == "ingress"]
    assert ingress["reason"] == "DROP_POLICY" and ingress["enforced"]
    text = np.porin(
        "policy",
        "explain",
        "--from",
        np.ip("y", "a"),
        "--to",
        "x/a",
        "--port",
        "80/tcp",
        node=owner,
    ).stdout
    assert "default deny" in text and "x/deny-all" in text
    entries = json.loads(np.porin("bpf", "policy", "get", "x/a", "-o", "json", node=owner).stdout)
    assert [e["labels"] for e in entries] == ["reserved:host"]  # the node may always reach its pods


@vxlan
def test_bad_input_applies_nothing(np):
    before = np.porin("policy", "list", "-o", "json").stdout
    good = policy("fine", "x", "  podSelector: {}")
    bad = policy(
        "broken", "x", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(good + bad)
        f.flush()
        r = np.porin("apply", "-f", f.name, check=False)
    assert r.returncode != 0
    assert (
        "document 2" in r.stderr and "ipBlock.cidr" in r.stderr and "not a valid CIDR" in r.stderr
    )
    assert np.porin("policy", "list", "-o", "json").stdout == before
    check(np, everything)


@both_tunnels
def test_restart_with_policies_keeps_enforcing(np):
    np.apply(policy("deny-all", "x", "  podSelector: {}"))
    check(np, lambda s, d: d[0] != "x")
    node = np.nodes[0]
    assert node.stop_agent() == 0  # it exits on SIGTERM (no kvstore watch keeps it alive)
    check(np, lambda s, d: d[0] != "x")  # the datapath keeps it without its agent
    node.start_agent()
    check(np, lambda s, d: d[0] != "x")


@vxlan  # the kvstore's part, which no tunnel changes
def test_etcd_down_keeps_the_last_policy_and_takes_new_ones(np):
    np.apply(policy("deny-all", "x", "  podSelector: {}"))
    check(np, lambda s, d: d[0] != "x")
    np.etcd.stop()
    try:
        node = np.nodes[1]
        node.stop_agent()
        node.start_agent()  # from the cached copy
        check(np, lambda s, d: d[0] != "x")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(policy("during-outage", "y", "  podSelector: {}"))
            f.flush()
            # taken while etcd is away: enforced on the node that took it, and
            # written to etcd (so to the other nodes) once it is back
            r = np.porin("apply", "-f", f.name, check=False)
        assert r.returncode == 0 and "kvstore pending" in r.stderr, r.stderr
        assert "y/during-outage" in {
            f"{p['namespace']}/{p['name']}" for p in np.nodes[0].porin_json("policy", "list")
        }
    finally:
        np.etcd.start()
        for n in np.nodes:
            wait_for(
                lambda n=n: n.porin_json("status")["kvstore"]["state"] == "connected",
                30,
                "reconnect",
            )
    check(np, lambda s, d: d[0] not in ("x", "y"))  # every node enforces both now
