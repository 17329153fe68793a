"""daemon/health.py: the probe schedule and records, without a network."""

from __future__ import annotations

import struct

from porin.daemon.health import BASE_INTERVAL, NodeHealth, _checksum, round_interval


def test_rounds_grow_with_the_cluster_so_nobody_is_flooded():
    assert round_interval(2) == BASE_INTERVAL
    assert round_interval(1000) == 50.0
    # every node is probed by each of the others once a round: at 1,000 nodes
    # that is under 20 probes a second per node
    assert 1000 / round_interval(1000) <= 20


def test_icmp_checksum_is_the_internet_checksum():
    header = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"abc"
    csum = _checksum(header)
    whole = struct.pack("!BBHHH", 8, 0, csum, 0x1234, 1) + b"abc"
    assert _checksum(whole) == 0


def test_a_node_is_healthy_only_when_every_path_works():
    h = NodeHealth("n2", "198.18.0.12", "10.244.2.1")
    assert h.to_json()["healthy"] is False  # not probed yet
    for p in h.paths.values():
        p.record(True, 0.001)
    assert h.to_json()["healthy"] is True
    h.paths["overlay"].record(False, 0.0, "TimeoutError: timed out")
    j = h.to_json()
    assert not j["healthy"] and j["overlay"]["http"]["lastError"].startswith("TimeoutError")
    assert j["overlay"]["http"]["lastSuccess"] is not None  # kept from the last success
    assert j["nodeNetwork"]["icmp"]["latencyMs"] == 1.0
    # a node that publishes no overlay address is judged on the node network alone
    old = NodeHealth("n3", "198.18.0.13", "")
    for path in ("icmp", "http"):
        old.paths[path].record(True, 0.001)
    assert old.to_json()["healthy"] is True
