"""Bad input gets the spec's error code and leaks nothing (no veth, address, entry)."""

from __future__ import annotations

import os

import pytest
from porinlab import Netns

GOOD = {"cniVersion": "1.0.0", "name": "porin", "type": "porin"}


@pytest.fixture(scope="module")
def pod_ns():
    ns = Netns(kind="pod")
    yield ns
    ns.close()


@pytest.fixture(scope="module")
def not_a_netns(tmp_path_factory):
    p = tmp_path_factory.mktemp("x") / "plain-file"
    p.write_text("not a namespace")
    return str(p)


def cases(node, pod_ns, not_a_netns):
    sock = {"agentSocket": node.cfg.socket}
    good = {**GOOD, **sock}
    ns = pod_ns.path
    return [
        # (id, command, container id, netns, ifname, conf, extra env, dropped env, expected code)
        ("not-json", "ADD", "c1", ns, "eth0", b"{nope", {}, (), 6),
        ("not-an-object", "ADD", "c1", ns, "eth0", b"[1,2]", {}, (), 6),
        (
            "unsupported-version",
            "ADD",
            "c1",
            ns,
            "eth0",
            {**good, "cniVersion": "9.9.9"},
            {},
            (),
            1,
        ),
        (
            "no-name",
            "ADD",
            "c1",
            ns,
            "eth0",
            {k: v for k, v in good.items() if k != "name"},
            {},
            (),
            7,
        ),
        ("bad-name", "ADD", "c1", ns, "eth0", {**good, "name": "-bad name"}, {}, (), 7),
        ("bad-mtu", "ADD", "c1", ns, "eth0", {**good, "mtu": "big"}, {}, (), 7),
        ("tiny-mtu", "ADD", "c1", ns, "eth0", {**good, "mtu": 100}, {}, (), 7),
        ("ipam-not-object", "ADD", "c1", ns, "eth0", {**good, "ipam": "host-local"}, {}, (), 7),
        ("ipam-path", "ADD", "c1", ns, "eth0", {**good, "ipam": {"type": "../x"}}, {}, (), 7),
        (
            "bad-dns",
            "ADD",
            "c1",
            ns,
            "eth0",
            {**good, "dns": {"nameservers": "1.1.1.1"}},
            {},
            (),
            7,
        ),
        ("no-command", "ADD", "c1", ns, "eth0", good, {}, ("CNI_COMMAND",), 4),
        ("bad-command", "FROB", "c1", ns, "eth0", good, {}, (), 4),
        ("no-container-id", "ADD", "", ns, "eth0", good, {}, (), 4),
        ("bad-container-id", "ADD", "c1;rm -rf", ns, "eth0", good, {}, (), 4),
        ("no-netns", "ADD", "c1", "", "eth0", good, {}, (), 4),
        ("relative-netns", "ADD", "c1", "netns/x", "eth0", good, {}, (), 4),
        ("no-ifname", "ADD", "c1", ns, "", good, {}, (), 4),
        ("long-ifname", "ADD", "c1", ns, "eth0-much-too-long", good, {}, (), 4),
        ("bad-cni-args", "ADD", "c1", ns, "eth0", good, {"CNI_ARGS": "novalue"}, (), 4),
        ("no-cni-path", "ADD", "c1", ns, "eth0", good, {}, ("CNI_PATH",), 4),
        ("missing-netns", "ADD", "c1", "/var/run/netns/pl-nope", "eth0", good, {}, (), 3),
        ("netns-is-a-file", "ADD", "c1", not_a_netns, "eth0", good, {}, (), 3),
        ("ifname-exists", "ADD", "c1", ns, "lo", good, {}, (), 106),
        (
            "unknown-ipam-plugin",
            "ADD",
            "c1",
            ns,
            "eth0",
            {**good, "ipam": {"type": "nosuch"}},
            {},
            (),
            103,
        ),
        ("prev-result-on-add", "ADD", "c1", ns, "eth0", {**good, "prevResult": {}}, {}, (), 7),
        ("check-0.3.1", "CHECK", "c1", ns, "eth0", {**good, "cniVersion": "0.3.1"}, {}, (), 1),
        (
            "agent-down",
            "ADD",
            "c1",
            ns,
            "eth0",
            {**good, "agentSocket": "/run/pl-none.sock"},
            {},
            (),
            11,
        ),
    ]


def test_bad_inputs_error_and_leak_nothing(node, pod_ns, not_a_netns, snapshot, settled):
    before = snapshot(node)
    seen = []
    for cid, cmd, container, netns, ifname, conf, env, dropped, code in cases(
        node, pod_ns, not_a_netns
    ):
        rc, out = node.cni(cmd, container, netns, ifname, conf=conf, env=env, drop_env=dropped)
        assert rc != 0, cid
        assert isinstance(out, dict) and out.get("code") == code, (cid, out)
        assert out["msg"] and "Traceback" not in out["msg"], (cid, out)
        assert "cniVersion" in out
        seen.append(cid)
        settled(node, before)
    assert len(seen) >= 15
    # the pod namespace is untouched: only lo, no address
    links = pod_ns.exec(["ip", "-o", "link"]).stdout.strip().splitlines()
    assert len(links) == 1 and "lo" in links[0]


def test_address_conflict_rolls_back_ipam_plugin(node, snapshot, settled, tmp_path):
    """A delegated IPAM hands out an address already in use: error, and the lease is returned."""
    first = node.add_pod()
    before = snapshot(node)
    ns = Netns(kind="pod")
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.0.0/24", "rangeStart": first.ip, "rangeEnd": first.ip}]],
        "dataDir": str(tmp_path / "hl"),
    }
    try:
        rc, out = node.cni("ADD", "conflict", ns.path, conf=node.netconf(ipam=ipam))
        assert rc != 0 and out["code"] == 104, out
        settled(node, before)
        leases = tmp_path / "hl" / "porin"
        assert not any(p.name == first.ip for p in leases.glob("*")), os.listdir(leases)
    finally:
        ns.close()
        node.del_pod(first)


def test_version_needs_no_agent(node):
    rc, out = node.cni("VERSION", conf=b'{"cniVersion":"0.4.0"}', drop_env=("CNI_PATH",))
    assert rc == 0
    assert out["cniVersion"] == "0.4.0"
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_hostile_api_clients_get_4xx_change_nothing_and_block_no_cni_call(node):
    """hack/fuzz --api against this node's agent (hack/fuzz_api.py has the cases)."""
    import fuzz_api

    res = fuzz_api.fuzz_api(node, seed=20261202, log=print)
    assert res.failures == [], res.failures[:10]
    assert res.requests > 1000 and res.cni_ops >= 2
    assert set(res.statuses) <= set(range(400, 500))
    kinds = {"malformed JSON", "wrong type", "too big", "no request line", "method FOO"}
    assert kinds <= set(res.by_kind)
