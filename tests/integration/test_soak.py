"""hack/soak: 100 cycles of ADD/DEL under faults, nothing leaked, every live pod reachable."""

from __future__ import annotations

import soak


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
