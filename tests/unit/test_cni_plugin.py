"""cni/plugin.py run(): one CNI invocation end to end, against a missing or a fake agent.

The fake agent is a tiny HTTP/1.0 server on a unix socket under tmp_path; no
namespaces or links are created. DEL with the agent down sends one RTM_DELLINK
for a link that does not exist, which the plugin treats as already gone.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from porin.cni import errors
from porin.cni.netconf import SUPPORTED_VERSIONS
from porin.cni.plugin import run
from porin.models import lxc_name

CID = "c0ffee42"
NETNS = "/var/run/netns/pod1"

ENDPOINT = {
    "id": 7,
    "containerID": CID,
    "ifname": "eth0",
    "netns": NETNS,
    "network": "porin",
    "ipv4": "10.244.0.5/32",
    "gateway": "10.244.0.1",
    "mtu": 1500,
    "hostIfname": lxc_name(CID, "eth0"),
    "state": "ready",
    "mac": "02:00:00:00:00:05",
    "hostMac": "02:00:00:00:00:01",
}


class FakeAgent:
    """Answers each request from `routes`, keyed by (method, path without query)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append((method, target, json.loads(body) if body else None))
        status, payload = self.routes.get(
            (method, target.split("?", 1)[0]), (404, {"error": "no such route", "cniCode": 100})
        )
        out = json.dumps(payload).encode()
        conn.sendall(
            f"HTTP/1.0 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(out)}\r\n\r\n".encode()
            + out
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    path = str(tmp_path / "a.sock")
    assert len(path) < 100, "unix socket path too long for this test"
    return path


@pytest.fixture
def agent(sock_path: str) -> Iterator[FakeAgent]:
    fake = FakeAgent(sock_path)
    try:
        yield fake
    finally:
        fake.close()


def netconf(sock: str, version: str = "1.0.0", **extra: Any) -> bytes:
    return json.dumps(
        {"cniVersion": version, "name": "porin", "type": "porin", "agentSocket": sock, **extra}
    ).encode()


def cni_env(command: str, cni_path: str = "/nonexistent", **overrides: str | None) -> dict:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": CID,
        "CNI_NETNS": NETNS,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def assert_error(status: int, out: Any, code: int, version: str | None = "1.1.0") -> dict:
    """Spec error JSON; `version` None: any supported version (the netconf was unusable)."""
    assert status != 0
    assert isinstance(out, dict)
    if version is None:
        assert out["cniVersion"] in SUPPORTED_VERSIONS
    else:
        assert out["cniVersion"] == version
    assert out["code"] == code, out
    assert isinstance(out["msg"], str) and out["msg"]
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    json.dumps(out)  # printable as-is
    return out


# --- VERSION -----------------------------------------------------------------


def test_version_without_stdin() -> None:
    status, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert status == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_version_echoes_requested_version(version: str) -> None:
    status, out = run({"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}).encode())
    assert status == 0
    assert out is not None
    assert out["cniVersion"] == version
    assert out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("stdin", [b"garbage", b"[]", b'{"cniVersion": "0.2.0"}', b"  \n"])
def test_version_with_odd_stdin_still_answers(stdin: bytes) -> None:
    status, out = run({"CNI_COMMAND": "VERSION"}, stdin)
    assert status == 0
    assert out is not None
    assert out["cniVersion"] == "1.1.0"
    assert "0.4.0" in out["supportedVersions"]


def test_version_needs_no_container_env_or_netconf() -> None:
    status, out = run({"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "-bad"}, b"")
    assert status == 0
    assert out is not None and "supportedVersions" in out


# --- error JSON for bad inputs -----------------------------------------------


def test_missing_command_is_error_json() -> None:
    status, out = run({}, b"")
    assert_error(status, out, errors.INVALID_ENV, version=None)


def test_unknown_command_is_error_json(sock_path: str) -> None:
    status, out = run(cni_env("FROB"), netconf(sock_path))
    assert_error(status, out, errors.INVALID_ENV, version=None)


def test_missing_container_id_is_error_json(sock_path: str) -> None:
    status, out = run(cni_env("ADD", CNI_CONTAINERID=None), netconf(sock_path))
    out = assert_error(status, out, errors.INVALID_ENV, version=None)
    assert "CNI_CONTAINERID" in out["msg"]


def test_non_json_netconf_is_decode_failure() -> None:
    status, out = run(cni_env("ADD"), b"{not json")
    assert_error(status, out, errors.DECODE_FAILURE, version=None)


def test_unsupported_version_is_incompatible(sock_path: str) -> None:
    status, out = run(cni_env("ADD"), netconf(sock_path, version="0.2.0"))
    out = assert_error(status, out, errors.INCOMPATIBLE_VERSION, version=None)
    assert "0.2.0" in out["msg"]
    assert "1.1.0" in out["details"]


def test_invalid_netconf_is_invalid_config(sock_path: str) -> None:
    status, out = run(cni_env("ADD"), netconf(sock_path, version="0.4.0", mtu=10))
    out = assert_error(status, out, errors.INVALID_CONFIG, version=None)
    assert "mtu" in out["msg"]


# --- ADD ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_add_with_agent_down_is_try_again(sock_path: str, version: str) -> None:
    assert not os.path.exists(sock_path)
    status, out = run(cni_env("ADD"), netconf(sock_path, version=version))
    out = assert_error(status, out, errors.TRY_AGAIN, version=version)
    assert out["code"] == 11
    assert "porin-agent" in out["msg"]
    assert sock_path in out["msg"]


def test_add_with_prev_result_is_invalid_config(sock_path: str) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
    status, out = run(cni_env("ADD"), netconf(sock_path, prevResult=prev))
    assert_error(status, out, errors.INVALID_CONFIG, version="1.0.0")


def test_add_with_agent_returns_spec_result(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("PUT", "/v1/endpoints")] = (201, ENDPOINT)
    dns = {"nameservers": ["10.96.0.10"], "search": ["svc.local"]}
    environ = cni_env("ADD", CNI_ARGS="K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0")
    status, out = run(environ, netconf(sock_path, version="1.0.0", mtu=1400, dns=dns))
    assert status == 0
    assert out == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": lxc_name(CID, "eth0"), "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "02:00:00:00:00:05", "sandbox": NETNS},
        ],
        "ips": [{"address": "10.244.0.5/32", "gateway": "10.244.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.local"]},
    }
    assert agent.requests == [
        (
            "PUT",
            "/v1/endpoints",
            {
                "containerID": CID,
                "ifname": "eth0",
                "netns": NETNS,
                "network": "porin",
                "mtu": 1400,
                "labels": {
                    "k8s:io.kubernetes.pod.namespace": "prod",
                    "k8s:io.kubernetes.pod.name": "web-0",
                },
                "ports": [],
                "portMappings": [],
            },
        )
    ]


def test_add_agent_error_code_is_passed_through(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("PUT", "/v1/endpoints")] = (
        409,
        {"error": "eth0 of c0ffee42 exists with another netns", "cniCode": 104},
    )
    status, out = run(cni_env("ADD"), netconf(sock_path))
    out = assert_error(status, out, errors.PORIN_CONFLICT, version="1.0.0")
    assert out["msg"] == "eth0 of c0ffee42 exists with another netns"


def test_add_agent_error_without_code_is_internal(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("PUT", "/v1/endpoints")] = (500, {"error": "boom"})
    status, out = run(cni_env("ADD"), netconf(sock_path))
    out = assert_error(status, out, errors.PORIN_INTERNAL, version="1.0.0")
    assert out["msg"] == "boom"


# --- ADD with a delegated IPAM plugin ------------------------------------------


def write_ipam_plugin(bindir: Path, result: dict[str, Any]) -> Path:
    """A fake IPAM plugin: logs 'COMMAND CONTAINERID IFNAME' per call, prints `result` on ADD."""
    log = bindir / "ipam.log"
    script = bindir / "fake-ipam"
    script.write_text(
        "#!/bin/sh\n"
        "cat >/dev/null\n"
        f'echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> "{log}"\n'
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        f"  echo '{json.dumps(result)}'\n"
        "fi\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


IPAM_RESULT = {
    "cniVersion": "1.0.0",
    "ips": [{"address": "10.9.0.7/24", "gateway": "10.9.0.1"}],
    "dns": {"nameservers": ["10.9.0.53", "10.96.0.10"], "domain": "corp.local"},
}


def test_add_with_missing_ipam_plugin(tmp_path: Path, sock_path: str) -> None:
    environ = cni_env("ADD", cni_path=str(tmp_path))
    status, out = run(environ, netconf(sock_path, ipam={"type": "host-local"}))
    out = assert_error(status, out, errors.PORIN_IPAM_PLUGIN, version="1.0.0")
    assert "host-local" in out["msg"]


def test_add_with_ipam_plugin_sends_its_address(
    tmp_path: Path, agent: FakeAgent, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_ipam_plugin(tmp_path, IPAM_RESULT)
    environ = cni_env("ADD", cni_path=str(tmp_path))
    for key, value in environ.items():  # what main() would see in os.environ
        monkeypatch.setenv(key, value)
    ep = dict(ENDPOINT, ipv4="10.9.0.7/24", gateway="10.9.0.1")
    agent.routes[("PUT", "/v1/endpoints")] = (201, ep)
    stdin = netconf(sock_path, ipam={"type": "fake-ipam"}, dns={"nameservers": ["10.96.0.10"]})
    status, out = run(environ, stdin)
    assert status == 0, out
    assert out is not None
    [(_, _, body)] = agent.requests
    assert body["ipv4"] == "10.9.0.7/24"
    assert body["gateway"] == "10.9.0.1"
    assert out["ips"][0]["address"] == "10.9.0.7/24"
    assert out["dns"] == {
        "nameservers": ["10.96.0.10", "10.9.0.53"],
        "domain": "corp.local",
    }
    assert log.read_text().split("\n")[:-1] == [f"ADD {CID} eth0"]


def test_add_rolls_back_ipam_when_agent_is_down(
    tmp_path: Path, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_ipam_plugin(tmp_path, IPAM_RESULT)
    environ = cni_env("ADD", cni_path=str(tmp_path))
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    status, out = run(environ, netconf(sock_path, ipam={"type": "fake-ipam"}))
    assert_error(status, out, errors.TRY_AGAIN, version="1.0.0")
    assert log.read_text().split("\n")[:-1] == [f"ADD {CID} eth0", f"DEL {CID} eth0"]


def test_add_rolls_back_ipam_without_ipv4(
    tmp_path: Path, agent: FakeAgent, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_ipam_plugin(tmp_path, {"cniVersion": "1.0.0", "ips": [{"address": "fd00::7/64"}]})
    environ = cni_env("ADD", cni_path=str(tmp_path))
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    status, out = run(environ, netconf(sock_path, ipam={"type": "fake-ipam"}))
    out = assert_error(status, out, errors.PORIN_IPAM_PLUGIN, version="1.0.0")
    assert "IPv4" in out["msg"]
    assert agent.requests == []
    assert log.read_text().split("\n")[:-1] == [f"ADD {CID} eth0", f"DEL {CID} eth0"]


def test_ipam_plugin_gets_the_invocation_environment(
    tmp_path: Path, agent: FakeAgent, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC: the delegated plugin runs with the CNI_* environment of this invocation,
    i.e. the `environ` given to run(), not whatever the process environment holds."""
    for key in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        monkeypatch.delenv(key, raising=False)
    log = write_ipam_plugin(tmp_path, IPAM_RESULT)
    agent.routes[("PUT", "/v1/endpoints")] = (201, ENDPOINT)
    environ = cni_env("ADD", cni_path=str(tmp_path))
    status, out = run(environ, netconf(sock_path, ipam={"type": "fake-ipam"}))
    assert status == 0, out
    assert log.read_text().split("\n")[:-1] == [f"ADD {CID} eth0"]


# --- DEL ---------------------------------------------------------------------


def pending_note(sock_path: str, cid: str = CID, ifname: str = "eth0") -> Path:
    return Path(os.path.dirname(sock_path)) / "pending-delete" / f"{lxc_name(cid, ifname)}.json"


def test_del_with_agent_down_leaves_pending_note(sock_path: str) -> None:
    status, out = run(cni_env("DEL"), netconf(sock_path))
    assert (status, out) == (0, None)
    note = pending_note(sock_path)
    assert note.is_file()
    assert json.loads(note.read_text()) == {"containerID": CID, "ifname": "eth0", "netns": NETNS}
    assert sorted(p.name for p in note.parent.iterdir()) == [note.name]  # no temp file left


def test_del_with_agent_down_and_no_netns(sock_path: str) -> None:
    status, out = run(cni_env("DEL", CNI_NETNS=None, CNI_IFNAME="net1"), netconf(sock_path))
    assert (status, out) == (0, None)
    note = pending_note(sock_path, ifname="net1")
    assert json.loads(note.read_text()) == {"containerID": CID, "ifname": "net1", "netns": ""}


def test_del_with_agent_down_is_idempotent(sock_path: str) -> None:
    assert run(cni_env("DEL"), netconf(sock_path)) == (0, None)
    assert run(cni_env("DEL"), netconf(sock_path)) == (0, None)
    assert pending_note(sock_path).is_file()


def test_del_with_agent_up(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("DELETE", "/v1/endpoints")] = (200, {"deleted": True})
    status, out = run(cni_env("DEL"), netconf(sock_path))
    assert (status, out) == (0, None)
    assert agent.requests == [
        ("DELETE", f"/v1/endpoints?containerID={CID}&ifname=eth0", None),
    ]
    assert not pending_note(sock_path).parent.exists()


def test_del_agent_error_is_reported(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("DELETE", "/v1/endpoints")] = (500, {"error": "map busy", "cniCode": 100})
    status, out = run(cni_env("DEL"), netconf(sock_path, version="0.4.0"))
    out = assert_error(status, out, errors.PORIN_INTERNAL, version="0.4.0")
    assert out["msg"] == "map busy"


# --- CHECK -------------------------------------------------------------------

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": NETNS}],
    "ips": [{"address": "10.244.0.5/32", "interface": 0}],
}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_before_0_4_0_is_incompatible(sock_path: str, version: str) -> None:
    status, out = run(cni_env("CHECK"), netconf(sock_path, version=version, prevResult=PREV))
    out = assert_error(status, out, errors.INCOMPATIBLE_VERSION, version=version)
    assert out["code"] == 1


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_without_prev_result_is_invalid_config(sock_path: str, version: str) -> None:
    status, out = run(cni_env("CHECK"), netconf(sock_path, version=version))
    out = assert_error(status, out, errors.INVALID_CONFIG, version=version)
    assert "prevResult" in out["msg"]


def test_check_with_agent_down_is_try_again(sock_path: str) -> None:
    status, out = run(cni_env("CHECK"), netconf(sock_path, prevResult=PREV))
    assert_error(status, out, errors.TRY_AGAIN, version="1.0.0")


def test_check_passes(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("POST", "/v1/endpoints/check")] = (200, {"problems": []})
    agent.routes[("GET", "/v1/endpoints")] = (200, [ENDPOINT])
    status, out = run(cni_env("CHECK"), netconf(sock_path, prevResult=PREV))
    assert (status, out) == (0, None)
    assert agent.requests[0] == (
        "POST",
        "/v1/endpoints/check",
        {"containerID": CID, "ifname": "eth0", "netns": NETNS},
    )


def test_check_reports_agent_problems_and_address_mismatch(
    agent: FakeAgent, sock_path: str
) -> None:
    agent.routes[("POST", "/v1/endpoints/check")] = (200, {"problems": ["veth is down"]})
    agent.routes[("GET", "/v1/endpoints")] = (200, [ENDPOINT])
    prev = dict(PREV, ips=[{"address": "10.244.0.99/32", "interface": 0}])
    status, out = run(cni_env("CHECK"), netconf(sock_path, prevResult=prev))
    out = assert_error(status, out, errors.PORIN_CHECK_FAILED, version="1.0.0")
    assert "veth is down" in out["msg"]
    assert "10.244.0.5/32" in out["msg"]


# --- STATUS and GC -----------------------------------------------------------


def test_status_with_agent_down_is_not_available(sock_path: str) -> None:
    status, out = run({"CNI_COMMAND": "STATUS"}, netconf(sock_path, version="1.1.0"))
    out = assert_error(status, out, errors.NOT_AVAILABLE, version="1.1.0")
    assert out["code"] == 50
    assert "porin-agent" in out["msg"]


def test_status_with_agent_up(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("GET", "/v1/healthz")] = (200, {"status": "ok"})
    status, out = run({"CNI_COMMAND": "STATUS"}, netconf(sock_path, version="1.1.0"))
    assert (status, out) == (0, None)


def test_status_with_unhealthy_agent(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("GET", "/v1/healthz")] = (503, {"error": "datapath not loaded"})
    status, out = run({"CNI_COMMAND": "STATUS"}, netconf(sock_path, version="1.1.0"))
    out = assert_error(status, out, errors.NOT_AVAILABLE, version="1.1.0")
    assert "datapath not loaded" in out["msg"]


def test_gc_with_agent_down_is_try_again(sock_path: str) -> None:
    status, out = run({"CNI_COMMAND": "GC"}, netconf(sock_path, version="1.1.0"))
    assert_error(status, out, errors.TRY_AGAIN, version="1.1.0")


def test_gc_sends_valid_attachments(agent: FakeAgent, sock_path: str) -> None:
    agent.routes[("POST", "/v1/gc")] = (200, {"removed": []})
    valid = [{"containerID": CID, "ifname": "eth0"}]
    stdin = netconf(sock_path, version="1.1.0", **{"cni.dev/valid-attachments": valid})
    status, out = run({"CNI_COMMAND": "GC"}, stdin)
    assert (status, out) == (0, None)
    assert agent.requests == [
        ("POST", "/v1/gc", {"network": "porin", "validAttachments": valid}),
    ]
