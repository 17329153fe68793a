"""hack/soak: 100 cycles of ADD/DEL under faults, nothing leaked, every live pod reachable."""

from __future__ import annotations

import soak
import soak_cluster


def test_a_hundred_cycles_of_faults_leak_nothing():
    s = soak.Soak(seed=20261202, parallel=32, log=print)
    try:
        res = s.run(100)
    finally:
        s.close()
    assert res.errors == [], res.errors[:5]
    assert res.leaks == [] and res.unreachable == []
    assert res.cycles == 100 and res.checks >= 3
    # the faults the harness is for were drawn (the seed fixes which)
    assert {"kill-add", "kill-del", "agent-kill", "netns-gone", "burst", "disk-full"} <= set(
        res.faults
    ), res.faults
    # the agent's descriptors do not grow with the pods it served
    assert res.fds[-1][1] <= res.fds[1][1], res.fds


def test_soak_on_two_nodes_through_a_kvstore_outage():
    """Pods come and go on two nodes sharing a real etcd; etcd goes away for
    a while during which pods, services and policies change on every node:
    the anchor pods' conversation goes on, every change is said to be pending,
    and once etcd is back every node and the kvstore agree with what was done
    within soak_cluster.CONVERGE_S, nothing deleted meanwhile coming back."""
    s = soak.Soak(seed=20261203, parallel=8, log=print, nodes=2, outage=6.0, outage_every=24)
    try:
        res = s.run(24)
    finally:
        s.close()
    assert res.errors == [], res.errors[:5]
    assert res.leaks == [] and res.unreachable == []
    assert res.faults["kvstore-outage"] == 1, res.faults
    (outage,) = res.outages
    # the outage changed what it is for: pods, services and policies
    assert {"add", "svc-update", "policy-apply"} <= set(outage.ops), outage.ops
    assert outage.converge_s is not None and outage.converge_s <= soak_cluster.CONVERGE_S
    # the conversation never fell silent for long (it answers every 50 ms)
    assert outage.longest_silence_s < 2.0, outage.longest_silence_s
