"""Lab helpers shared by the tests, the benchmarks and the demo tooling.

A node is a network namespace running its own porin-agent (own state dir,
bpffs root and socket); a pod is a network namespace attached through the
real CNI plugin, invoked exactly as a runtime does (env + stdin). Every
name is unique and every object is removed by `close()`, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("PORIN_VENV_BIN", ROOT / ".venv" / "bin"))
# the checkout VENV_BIN's Porin comes from (another build's, in hack/bench-ab)
SOURCE = Path(os.environ.get("PORIN_SOURCE", ROOT))
CNI_PLUGIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]
NETNS_DIR = "/var/run/netns"
PREFIX = "pl"  # every namespace the lab creates starts with this


def run(cmd: list[str] | str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    shell = isinstance(cmd, str)
    proc = subprocess.run(cmd, shell=shell, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# a TCP conversation with an echo server on port 7000 of argv[1]: a message every
# 50 ms, the count printed after each answer (it dies when the connection breaks)
CONVERSATION = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7000), timeout=5)
n = 0
while True:
    c.sendall(b"x"); assert c.recv(100); n += 1
    print(n, flush=True); time.sleep(0.05)
"""


class ProcessExited(RuntimeError):
    """What a condition waited on can no longer become true: its process is gone."""


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns a truthy value or the deadline passes
    (or `cond` raises ProcessExited: then at once)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except ProcessExited:
            raise
        except Exception as e:  # the condition may raise until it holds
            last_exc = e
        time.sleep(0.02)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


def unique(kind: str) -> str:
    return f"{PREFIX}{kind}-{uuid.uuid4().hex[:8]}"


class Netns:
    """A named network namespace with lo up."""

    def __init__(self, name: str | None = None, kind: str = "ns") -> None:
        self.name = name or unique(kind)
        run(["ip", "netns", "add", self.name])
        self.path = f"{NETNS_DIR}/{self.name}"
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def exec(
        self, cmd: list[str] | str, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess:
        """Run in the netns with nsenter (keeps /sys and its bpffs mount)."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return run(["nsenter", f"--net={self.path}", *cmd], check=check, **kw)

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net={self.path}", *cmd], **kw)

    def link(self, dev: str) -> dict[str, Any]:
        """`dev` as `ip -j link show` describes it (ifindex, address, mtu, ...)."""
        return json.loads(self.exec(["ip", "-j", "link", "show", dev]).stdout)[0]

    def close(self) -> None:
        run(["ip", "netns", "del", self.name], check=False)


@dataclass
class AgentConfig:
    node_name: str
    pod_cidr: str = "10.244.0.0/24"
    workdir: str = ""
    bpffs_root: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return f"{self.workdir}/run/porin.sock"

    @property
    def state_dir(self) -> str:
        return f"{self.workdir}/state"

    def to_yaml(self) -> str:
        lines = [
            f"nodeName: {self.node_name}",
            f"podCIDR: {self.pod_cidr}",
            f"stateDir: {self.state_dir}",
            f"bpffsRoot: {self.bpffs_root}",
            f"apiSocket: {self.socket}",
            "logLevel: debug",
        ]
        lines += [f"{k}: {json.dumps(v)}" for k, v in self.extra.items()]
        return "\n".join(lines) + "\n"


_XDP_CONST_FDS: dict[int, int] = {}


def load_xdp(code: bytes, what: str) -> int:
    """The fd of an XDP program of raw instructions `code`."""
    import ctypes

    from porin.maps import syscall

    class ProgLoad(ctypes.Structure):
        _fields_ = [
            ("prog_type", ctypes.c_uint32),
            ("insn_cnt", ctypes.c_uint32),
            ("insns", ctypes.c_uint64),
            ("license", ctypes.c_uint64),
            ("pad", ctypes.c_uint8 * 112),
        ]

    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ProgLoad(
        prog_type=6,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(lic),
    )
    return syscall.bpf(5, attr, f"load {what}")


def xdp_const_program(action: int) -> int:
    """The fd of a two-instruction XDP program that returns `action` (loaded
    once per action): XDP_PASS (2) for the lab's bridge ports, XDP_DROP (1)
    as the benchmarks' floor."""
    if action not in _XDP_CONST_FDS:
        # r0 = action; exit
        code = (
            bytes.fromhex("b7000000")
            + action.to_bytes(4, "little")
            + bytes.fromhex("95" + "00" * 7)
        )
        _XDP_CONST_FDS[action] = load_xdp(code, "a constant XDP program")
    return _XDP_CONST_FDS[action]


def xdp_redirect_program(ifindex: int) -> int:
    """The fd of an XDP program that redirects every frame to `ifindex` (a
    bridge port that forwards frames as a NIC's driver would, without an skb)."""
    code = (
        bytes.fromhex("b7010000") + ifindex.to_bytes(4, "little")  # r1 = ifindex
        + bytes.fromhex("b702000000000000")  # r2 = 0
        + bytes.fromhex("8500000017000000")  # call bpf_redirect
        + bytes.fromhex("9500000000000000")  # exit
    )  # fmt: skip
    return load_xdp(code, "an XDP redirect program")


def xdp_pass_program() -> int:
    return xdp_const_program(2)


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run this thread in the network namespace at `path` for the block: netlink
    sockets opened and BPF_PROG_TEST_RUNs made in it see that namespace (an
    XDP program's FIB lookups, its devices)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            libc.setns(home, 0x40000000)
    finally:
        os.close(target)
        os.close(home)


def attach_xdp(ns: Netns, device: str, fd: int, flags: int = 1 << 2) -> None:
    """Put the XDP program `fd` on `device` in `ns` (native mode by default)."""
    from pyroute2 import IPRoute

    with in_netns(ns.path), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=device)[0]
        ipr.link("set", index=idx, xdp={"attrs": [["IFLA_XDP_FD", fd], ["IFLA_XDP_FLAGS", flags]]})


def attach_xdp_pass(ns: Netns, device: str) -> None:
    """Give `device` in `ns` an XDP_PASS program in native mode: frames sent
    into a veth with XDP_TX or a redirect are dropped unless the receiving
    side has an XDP program of its own."""
    attach_xdp(ns, device, xdp_pass_program())


def start_agents(nodes: list[Node], timeout: float = 150.0) -> None:
    """Start the agents of `nodes` together, as a cluster's nodes boot, and
    wait until every one is ready: their datapath compiles share the CPUs
    instead of taking turns."""
    for n in nodes:
        n.launch_agent()
    deadline = time.monotonic() + timeout
    for n in nodes:
        wait_for(
            n.healthy,
            max(1.0, deadline - time.monotonic()),
            f"porin-agent of {n.ns.name} to be ready",
        )


class Underlay:
    """The node network: a bridge in a namespace of its own that nodes and
    "external" hosts join with a veth each (their side named eth0)."""

    def __init__(self, subnet: str = "198.18.0.0/24", name: str | None = None) -> None:
        self.subnet = subnet
        self.prefixlen = int(subnet.split("/")[1])
        self.ns = Netns(name=name, kind="net")
        self.ns.exec(["ip", "link", "add", "br0", "type", "bridge"])
        self.ns.exec(["ip", "link", "set", "br0", "up"])
        self._n = 0
        self.ports: dict[str, str] = {}  # namespace name -> its bridge-side port

    def attach(
        self,
        ns: Netns,
        ip: str,
        gateway: str | None = None,
        mtu: int = 1500,
        xdp_pass: bool = True,
    ) -> str:
        """Give `ns` an eth0 on this network with `ip`; returns the bridge-side port name.

        `xdp_pass`: the port gets an XDP_PASS program, which a joining side
        running native XDP needs (its XDP_TX frames are dropped otherwise). A
        host that runs no XDP does without, as on a real network: a veth with
        an XDP program receives in NAPI and copies most skbs into a page."""
        self._n += 1
        port = f"u{self._n}-{uuid.uuid4().hex[:6]}"
        self.ns.exec(
            [
                "ip",
                "link",
                "add",
                port,
                "mtu",
                str(mtu),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.path,
            ]
        )
        self.ns.exec(["ip", "link", "set", port, "master", "br0", "up"])
        self.ports[ns.name] = port
        if xdp_pass:  # native XDP on the joining side may XDP_TX into this veth
            attach_xdp_pass(self.ns, port)
        ns.exec(["ip", "link", "set", "eth0", "mtu", str(mtu), "up"])
        # frames on a wire carry whole checksums: a veth would hand the
        # sender's checksum offload (a partial checksum) to the receiver's
        # XDP, which never sees one from a NIC
        ns.exec(["ethtool", "-K", "eth0", "tx", "off"])
        ns.exec(["ip", "addr", "add", f"{ip}/{self.prefixlen}", "dev", "eth0"])
        if gateway:
            ns.exec(["ip", "route", "add", "default", "via", gateway])
        return port

    def close(self) -> None:
        self.ns.close()


class Etcd:
    """A real etcd server (Debian's etcd-server) in a namespace of its own on the underlay."""

    def __init__(self, underlay: Underlay, ip: str, name: str | None = None) -> None:
        self.ip = ip
        self.ns = Netns(name=name, kind="etcd")
        underlay.attach(self.ns, ip)
        self.data_dir = tempfile.mkdtemp(prefix=f"{self.ns.name}-")
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:2379"

    def start(self, timeout: float = 30.0, detach: bool = False) -> None:
        log = open(self.log_path, "a")
        self.proc = self.ns.popen(
            [
                "etcd",
                "--name",
                "porin",
                "--data-dir",
                os.path.join(self.data_dir, "data"),
                "--listen-client-urls",
                self.endpoint,
                "--advertise-client-urls",
                self.endpoint,
                "--listen-peer-urls",
                f"http://{self.ip}:2380",
                "--initial-advertise-peer-urls",
                f"http://{self.ip}:2380",
                "--initial-cluster",
                f"porin=http://{self.ip}:2380",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
        wait_for(self.healthy, timeout, "etcd to serve")

    def healthy(self) -> bool:
        r = self.ns.exec(
            ["etcdctl", f"--endpoints={self.endpoint}", "endpoint", "health"],
            check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return r.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.ns.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Prometheus:
    """A real Prometheus server (Debian's `prometheus`) in a namespace of its own on
    the underlay, scraping `targets` (HOST:PORT) every second; its own config
    and data dir, nothing of the machine's Prometheus (if any) is used."""

    def __init__(self, underlay: Underlay, ip: str, targets: list[str], port: int = 9090) -> None:
        self.ip, self.port = ip, port
        self.ns = Netns(kind="prom")
        underlay.attach(self.ns, ip)
        self.data_dir = tempfile.mkdtemp(prefix=f"{self.ns.name}-")
        self.config_path = os.path.join(self.data_dir, "prometheus.yml")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "porin-agent", "static_configs": [{"targets": targets}]}
            ],
        }
        Path(self.config_path).write_text(json.dumps(config))  # JSON is YAML
        self.log_path = os.path.join(self.data_dir, "prometheus.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "a")
        self.proc = self.ns.popen(
            [
                "prometheus",
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={os.path.join(self.data_dir, 'data')}",
                f"--web.listen-address={self.ip}:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ready, timeout, "Prometheus to be ready")

    def _get(self, path: str) -> tuple[int, str]:
        r = self.ns.exec(
            ["curl", "-s", "-m", "5", "-w", "\\n%{http_code}", f"{self.url}{path}"], check=False
        )
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessExited(f"prometheus exited:\n{Path(self.log_path).read_text()[-3000:]}")
        return self._get("/-/ready")[0] == 200

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: [{metric: {labels}, value: float}]."""
        from urllib.parse import quote

        code, body = self._get(f"/api/v1/query?query={quote(expr)}")
        data = json.loads(body)
        if code != 200 or data.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed ({code}): {body[:500]}")
        return [
            {"metric": r["metric"], "value": float(r["value"][1])} for r in data["data"]["result"]
        ]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ns.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Node:
    """A node namespace with its own porin-agent (optionally on an underlay)."""

    def __init__(
        self,
        pod_cidr: str = "10.244.0.0/24",
        underlay: Underlay | None = None,
        node_ip: str | None = None,
        gateway: str | None = None,
        name: str | None = None,
        workdir: str | None = None,
        **extra: Any,
    ) -> None:
        self.ns = Netns(name=name, kind="node")
        self.node_ip = node_ip
        if underlay is not None:
            assert node_ip is not None
            underlay.attach(self.ns, node_ip, gateway)
            extra.setdefault("devices", ["eth0"])
        if workdir:
            os.makedirs(workdir, exist_ok=True)
            self.workdir = workdir
        else:
            self.workdir = tempfile.mkdtemp(prefix=f"{self.ns.name}-")
        self.cfg = AgentConfig(
            node_name=self.ns.name,
            pod_cidr=pod_cidr,
            workdir=self.workdir,
            bpffs_root=f"/sys/fs/bpf/{self.ns.name}",
            extra=extra,
        )
        self.config_path = f"{self.workdir}/agent.yaml"
        Path(self.config_path).write_text(self.cfg.to_yaml())
        self.log_path = f"{self.workdir}/agent.log"
        self.proc: subprocess.Popen | None = None
        self.pods: dict[str, Pod] = {}
        # where porin-agent, porin and porin-cni come from (another build's:
        # hack/previous_build.py)
        self.bin: Path = VENV_BIN

    @property
    def env(self) -> dict[str, str]:
        """Environment for the porin CLI against this node."""
        return {**os.environ, "PORIN_CONFIG": self.config_path}

    def launch_agent(self, detach: bool = False) -> None:
        """Start the agent without waiting for it (see start_agents)."""
        log = open(self.log_path, "a")
        self.proc = self.ns.popen(
            [str(self.bin / "porin-agent"), "--config", self.config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )

    def start_agent(self, timeout: float = 60.0, detach: bool = False) -> None:
        self.launch_agent(detach)
        wait_for(self.healthy, timeout, f"porin-agent of {self.ns.name} to be ready")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessExited(f"porin-agent exited with {self.proc.returncode}:\n{self.log()}")
        r = self.porin("status", "-o", "json", check=False)
        return r.returncode == 0

    def stop_agent(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-5000:]
        except OSError:
            return ""

    def porin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ns.exec([str(self.bin / "porin"), *args], check=check, env=self.env)

    def porin_json(self, *args: str) -> Any:
        return json.loads(self.porin(*args, "-o", "json").stdout)

    def netconf(self, **over: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "porin",
            "type": "porin",
            "agentSocket": self.cfg.socket,
        }
        conf.update(over)
        return conf

    def cni(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "eth0",
        conf: dict[str, Any] | bytes | None = None,
        env: dict[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
    ) -> tuple[int, Any]:
        """Invoke the CNI plugin as a runtime does, inside the node netns."""
        full = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": ":".join(CNI_PLUGIN_DIRS),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        full.update(env or {})
        for k in drop_env:
            full.pop(k, None)
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf or self.netconf()).encode()
        proc = subprocess.run(
            ["nsenter", f"--net={self.ns.path}", str(self.bin / "porin-cni")],
            input=stdin,
            env=full,
            capture_output=True,
            timeout=120,
        )
        out = proc.stdout.decode().strip()
        return proc.returncode, (json.loads(out) if out else None)

    def add_pod(
        self,
        name: str | None = None,
        ifname: str = "eth0",
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None,
        **conf: Any,
    ) -> Pod:
        """A pod through CNI ADD; with a namespace, as kubelet calls it (CNI_ARGS),
        labels and declared ports in the conventions' `args.cni`."""
        ns = Netns(kind="pod")
        pod = Pod(ns=ns, container_id=f"c{uuid.uuid4().hex}", ifname=ifname, node=self)
        env = {}
        if namespace is not None:
            env["CNI_ARGS"] = f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name or ns.name}"
        if labels or ports:
            conf["args"] = {
                "cni": {
                    "labels": [{"key": k, "value": v} for k, v in (labels or {}).items()],
                    "ports": ports or [],
                }
            }
        rc, result = self.cni(
            "ADD", pod.container_id, ns.path, ifname, self.netconf(**conf), env=env
        )
        if rc != 0:
            ns.close()
            raise RuntimeError(f"CNI ADD failed: {result}\nagent log:\n{self.log()}")
        pod.result = result
        # pods of different namespaces may share a name: each is kept (and closed)
        key = f"{namespace}/{name}" if namespace is not None and name else (name or ns.name)
        self.pods[key] = pod
        return pod

    def del_pod(self, pod: Pod) -> tuple[int, Any]:
        rc, out = self.cni("DEL", pod.container_id, pod.ns.path, pod.ifname)
        pod.ns.close()
        self.pods = {k: v for k, v in self.pods.items() if v is not pod}
        return rc, out

    def forget_pods(self) -> None:
        """Remove the pods' namespaces without CNI DEL (their node is gone)."""
        for pod in self.pods.values():
            pod.ns.close()
        self.pods.clear()

    def links(self) -> list[str]:
        out = self.ns.exec(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def close(self) -> None:
        for pod in list(self.pods.values()):
            try:
                self.cni("DEL", pod.container_id, pod.ns.path, pod.ifname)
            except Exception:
                pass
            pod.ns.close()
        self.stop_agent()
        self.ns.close()
        # the agent's pins and state belong to this lab node only
        if os.path.isdir(self.cfg.bpffs_root):
            shutil.rmtree(self.cfg.bpffs_root, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Pod:
    ns: Netns
    container_id: str
    ifname: str
    node: Node
    result: dict[str, Any] | None = None

    @property
    def ip(self) -> str:
        assert self.result is not None
        return self.result["ips"][0]["address"].split("/")[0]

    def exec(
        self, cmd: list[str] | str, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess:
        return self.ns.exec(cmd, check=check, **kw)

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        return self.ns.popen(cmd, **kw)

    def ping(self, ip: str, count: int = 1) -> bool:
        return (
            self.exec(
                ["ping", "-c", str(count), "-W", "2", "-i", "0.2", ip], check=False
            ).returncode
            == 0
        )


def sweep_stale() -> None:
    """Remove lab namespaces and pins left by a run that was killed."""
    for name in os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []:
        if name.startswith(PREFIX) and "-" in name:
            run(["ip", "netns", "del", name], check=False)
    if os.path.isdir("/sys/fs/bpf"):
        for name in os.listdir("/sys/fs/bpf"):
            if name.startswith(PREFIX) and "-" in name:
                shutil.rmtree(f"/sys/fs/bpf/{name}", ignore_errors=True)
