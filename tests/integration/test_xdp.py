"""bpf_xdp.c on a node's uplink: an external host's ping answered in XDP, the
prefilter blocking and unblocking it, refusals that would lock the node out,
and the program replaced in place and removed only when it is Porin's."""

from __future__ import annotations

import pytest
from porinlab import Netns, Node, Underlay, wait_for

NODE_IP, EXT_IP = "198.18.0.11", "198.18.0.100"


@pytest.fixture(scope="module", params=["native", "generic", "best-effort"])
def lab(request):
    underlay = Underlay()
    ext = Netns(kind="ext")
    node = None
    try:
        underlay.attach(ext, EXT_IP)
        node = Node(
            pod_cidr="10.244.1.0/24", underlay=underlay, node_ip=NODE_IP, xdpMode=request.param
        )
        node.start_agent()
        yield node, ext
    finally:
        if node is not None:
            node.close()
        ext.close()
        underlay.close()


def pings(ext: Netns) -> bool:
    return ext.exec(["ping", "-c", "1", "-W", "1", NODE_IP], check=False).returncode == 0


def test_status_shows_the_mode_and_ping_is_answered_in_xdp(lab):
    node, ext = lab
    (x,) = node.porin_json("status")["host"]["xdp"]
    want = {"best-effort": "generic"}.get(node.cfg.extra["xdpMode"], node.cfg.extra["xdpMode"])
    assert (x["device"], x["mode"]) == ("eth0", want) and x["progID"] > 0  # best-effort: a veth
    before = node.porin_json("metrics", "xdp")["tx"]
    assert pings(ext)
    assert node.porin_json("metrics", "xdp")["tx"] >= before + 1
    echo = [m for m in node.porin_json("metrics", "list") if m["reason"].startswith("XDP: ping")]
    assert echo and echo[0]["packets"] >= 1


def test_prefilter_blocks_and_unblocks(lab):
    node, ext = lab
    assert pings(ext)
    node.porin("prefilter", "add", f"{EXT_IP}/32", "203.0.113.0/24")
    assert not pings(ext)
    listed = {r["cidr"]: r for r in node.porin_json("prefilter", "list")}
    assert listed[f"{EXT_IP}/32"]["packets"] >= 1 and listed[f"{EXT_IP}/32"]["source"] == "api"
    node.porin("prefilter", "delete", EXT_IP)
    wait_for(lambda: pings(ext), 5, "the external host to get through again")
    node.porin("prefilter", "delete", "203.0.113.0/24")
    assert node.porin_json("prefilter", "list") == []


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        (NODE_IP, "this node's address on eth0"),
        ("10.244.1.0/24", "the pods' gateway"),
        ("300.1.1.1", "not an IPv4 CIDR"),
    ],
)
def test_what_would_lock_the_node_out_is_refused(lab, cidr, why):
    node, _ = lab
    r = node.porin("prefilter", "add", "192.0.2.1", cidr, check=False)
    assert r.returncode != 0 and why in r.stderr
    assert node.porin_json("prefilter", "list") == []  # nothing of the call was added


def test_restart_replaces_in_place_and_keeps_the_list(lab):
    node, ext = lab
    node.porin("prefilter", "add", EXT_IP)
    node.stop_agent()
    assert not pings(ext)  # the program and its maps stay without the agent
    node.start_agent()
    assert not pings(ext)
    assert [r["cidr"] for r in node.porin_json("prefilter", "list")] == [f"{EXT_IP}/32"]
    node.porin("prefilter", "delete", EXT_IP)
    wait_for(lambda: pings(ext), 5, "the external host to get through again")
