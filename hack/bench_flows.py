#!/usr/bin/env python3
"""What the flow log costs pod-to-pod traffic: nobody observing vs `porin observe --follow`.

Two pods of one Porin node, client and server pinned to one CPU:

- TCP_RR: 1-byte requests and responses over one connection (hack/progs/crr.c
  rr). Its flow events are its first packet and first reply: what following
  costs an established connection is the check, not a ring write.
- TCP_CRR: a new connection per transaction, so every transaction is two
  flow events the agent reads, decodes and names while it follows.

The variants take turns in every round (ABBA); the figures are the medians
of same-round ratios follow/idle. Target: TCP_RR with a follower >= 0.9x.
"Nobody observing" against a build without the flow log at all is the A/B
of hack/bench-ab (e.g. `hack/bench-ab REV bench`, the pod-to-pod TCP_RR of
hack/bench.py): the capture switch off costs one array lookup per verdict.

    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_flows.py [--quick]

Exit status: 0 the target met, 1 it was missed or a problem was seen.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_host import build_crr  # noqa: E402
from benchlib import CPU, Lab, fmt_table, in_ns, median, record, run_bench, tune_client  # noqa: E402
from porinlab import VENV_BIN, Node, Pod, wait_for  # noqa: E402

from porin.maps.flow_lost import FlowLostMap  # noqa: E402

PORT = 7100
RR_TARGET = 0.9


def rate(crr: str, client: Pod, server_ip: str, mode: str, seconds: float) -> float:
    out = subprocess.run(
        in_ns(client.ns, ["taskset", "-c", CPU, crr, mode, server_ip, str(PORT), str(seconds)]),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    res = json.loads(out)
    return res["ok"] / max(res["seconds"], 1e-9)


def measure(lab: Lab, problems: list[str], args: argparse.Namespace) -> None:
    rounds, seconds = (2, 2.0) if args.quick else (6, 5.0)
    work = tempfile.mkdtemp(prefix="plbench-")
    lab.on_close(lambda: shutil.rmtree(work, ignore_errors=True))
    crr = build_crr(work)
    node = Node(pod_cidr="10.246.0.0/24", flowCaptureLinger=0)
    lab.on_close(node.close)
    node.start_agent()
    client = node.add_pod("client", namespace="bench", labels={"app": "client"})
    server = node.add_pod("server", namespace="bench", labels={"app": "server"})
    tune_client(client.ns)
    srv = lab.spawn(in_ns(server.ns, ["taskset", "-c", CPU, crr, "server", str(PORT)]))
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"

    def capturing(on: bool) -> bool:
        return node.porin_json("status")["flows"]["enabled"] is on

    results: dict[str, dict[str, list[float]]] = {
        m: {"idle": [], "follow": []} for m in ("rr", "client")
    }
    seen_before = node.porin_json("status")["flows"]["recorded"]
    lost_map = FlowLostMap(node.cfg.bpffs_root, read_only=True)
    lab.on_close(lost_map.close)
    lost_before = lost_map.totals()
    for r in range(rounds):
        order = ["idle", "follow"] if r % 2 == 0 else ["follow", "idle"]
        for variant in order:
            follower = None
            if variant == "follow":
                follower = subprocess.Popen(
                    [str(VENV_BIN / "porin"), "observe", "--follow", "-o", "json"],
                    env=node.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                wait_for(lambda: capturing(True), 10, "the follower to switch capture on")
            try:
                for mode in ("rr", "client"):
                    results[mode][variant].append(rate(crr, client, server.ip, mode, seconds))
            finally:
                if follower is not None:
                    follower.kill()
                    follower.wait()
                    wait_for(lambda: capturing(False), 10, "capture to go off again")
    st = node.porin_json("status")["flows"]
    recorded = st["recorded"] - seen_before
    lost = {k: v - lost_before[k] for k, v in lost_map.totals().items()}
    rows = []
    ratios = {}
    for mode, label in (("rr", "TCP_RR (one connection)"), ("client", "TCP_CRR (conn/s)")):
        idle, follow = results[mode]["idle"], results[mode]["follow"]
        ratio = median([f / i for f, i in zip(follow, idle, strict=True)])
        ratios[mode] = ratio
        rows.append([label, f"{median(idle):,.0f}/s", f"{median(follow):,.0f}/s", f"{ratio:.3f}x"])
        record(f"flows_{mode}_follow_ratio", ratio)
    print(
        fmt_table(["pod to pod", "nobody observing", "observe --follow", "ratio"], rows, {1, 2, 3})
    )
    print(
        f"flow events read by the agent: {recorded:,}; not written: over the budget "
        f"(flowRateLimit) {lost['rateLimited']:,}, ring full {lost['ringFull']:,}"
    )
    if ratios["rr"] < RR_TARGET:
        problems.append(f"TCP_RR with a follower {ratios['rr']:.3f}x (target >= {RR_TARGET})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    return run_bench(lambda lab, problems: measure(lab, problems, args))


if __name__ == "__main__":
    sys.exit(main())
