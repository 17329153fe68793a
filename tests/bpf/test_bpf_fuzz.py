"""hack/fuzz on every entry program, and proof that its checks catch what they claim."""

from __future__ import annotations

import os
import random

import fuzz
import pytest
from porinlab import xdp_const_program
from scapy.layers.inet import IP, TCP

SEED = 20261202


@pytest.fixture
def site_over(lxc):
    """A fuzz site over the session's compiled programs and maps."""
    root = os.path.dirname(lxc.endpoints.path)
    made = []

    def make(fds: dict[str, int]) -> fuzz.Site:
        made.append(fuzz.Site(list(fds), root=root, fds=fds))
        return made[-1]

    yield lxc, make
    for s in made:
        s.close()


def test_every_program_survives_hostile_packets(site_over):
    lxc, make = site_over
    fds = {name: lxc.progs[name].fd for name in fuzz.PROGRAMS}
    results = fuzz.fuzz(list(fds), 4000, SEED, print, site=make(fds))
    for r in results:
        assert r.failures == [], (r.program, r.failures[:5])
        assert r.packets == 4000
        kinds = {"truncated", "ip_header", "ip_options", "fragments", "tcp_flags"}
        kinds |= {"icmp_errors", "arp", "bitflip", "random"}
        assert kinds <= set(r.by_kind), (r.program, r.by_kind)
    by = {r.program: r for r in results}
    assert "tunnel_inner" in by["from_netdev"].by_kind and "tunnel_inner" in by["from_xdp"].by_kind
    # the packets reached the programs' real paths, not only their first checks
    assert set(by["from_container"].verdicts) == {"OK", "SHOT", "REDIRECT"}
    assert set(by["from_netdev"].verdicts) == {"OK", "SHOT", "REDIRECT"}
    # from_xdp (nodePortMode snat here) sends established NodePort flows on
    assert {"DROP", "PASS", "TX", "REDIRECT"} <= set(by["from_xdp"].verdicts)


def test_unexpected_verdicts_and_uncounted_packets_are_caught(site_over):
    _lxc, make = site_over
    # in from_xdp's place, a program that aborts and counts nothing
    site = make({"from_xdp": xdp_const_program(0)})
    r = fuzz.fuzz_program(site, "from_xdp", 300, random.Random(SEED))
    assert any("return value 0 is not one from_xdp documents" in f for f in r.failures)
    assert any("the metrics map counted 0 verdicts" in f for f in r.failures)
    assert any("xdp_metrics counted 0" in f for f in r.failures)


def test_state_from_malformed_packets_and_changed_bystanders_are_caught(site_over, monkeypatch):
    lxc, make = site_over
    site = make({"from_container": lxc.progs["from_container"].fd})
    a, b = fuzz.POD_A.ip, fuzz.POD_B.ip
    new_flow = fuzz.from_pod(IP(src=a, dst=b) / TCP(sport=41000, dport=8080, flags="S"))
    reset = fuzz.from_pod(
        IP(src=a, dst=b) / TCP(sport=fuzz.BYSTANDER_PORTS[0], dport=9000, flags="R")
    )
    monkeypatch.setattr(
        fuzz,
        "corpus",
        lambda prog, total, rnd: [fuzz.Batch("random", [new_flow]), fuzz.Batch("bitflip", [reset])],
    )
    r = fuzz.fuzz_program(site, "from_container", 2, random.Random(SEED))
    assert r.failures == [
        "random: malformed packets created 1 conntrack and 0 NAT entries",
        "bitflip: 1 bystander conntrack/NAT entries changed",
    ]
