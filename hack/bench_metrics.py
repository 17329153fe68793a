#!/usr/bin/env python3
"""What a Prometheus scrape of the agent costs at 1,000 endpoints and 10,000 services.

A real Porin node (agent in its namespace) gets 1,000 endpoints through
the agent's API (a veth into a namespace each, as CNI ADD makes them) and
10,000 ClusterIP services of three backends each in one batch. Then:

1. GET /metrics from inside the node's namespace, N times: the time of a
   whole scrape (connect, collect, transfer) and of its datapath part alone
   (the per-CPU counter maps and the map fill, read in the agent's way in
   this process), medians. Target: the scrape under 100 ms.
2. The agent's CPU (utime + stime from /proc) over stretches without
   scrapes and with one scrape per second, interleaved; the difference is
   what scraping once a second costs, as a share of one CPU.

    PATH=.venv/bin:$PATH .venv/bin/python hack/bench_metrics.py [--quick]

Exit status: 0 the target met, 1 it was missed or a problem was seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Lab, fmt_table, median, record, run_bench  # noqa: E402
from porinlab import Node  # noqa: E402

from porin.client import AgentClient  # noqa: E402
from porin.daemon.map_pressure import MapPressure  # noqa: E402
from porin.daemon.metrics_collect import DatapathCollector  # noqa: E402

SCRAPE_TARGET_MS = 100.0
PORT = 9962

SCRAPER = """
import json, sys, time, urllib.request
n, interval = int(sys.argv[1]), float(sys.argv[2])
out = []
for i in range(n):
    t = time.perf_counter()
    with urllib.request.urlopen(sys.argv[3], timeout=10) as r:
        body = r.read()
    out.append((time.perf_counter() - t) * 1000)
    if interval:
        time.sleep(max(0.0, interval - (time.perf_counter() - t)))
print(json.dumps({"ms": out, "bytes": len(body),
                  "series": sum(1 for l in body.splitlines() if l and not l.startswith(b"#"))}))
"""


def agent_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def populate(node: Node, lab: Lab, endpoints: int, services: int) -> list[str]:
    client = AgentClient(node.cfg.socket, timeout=120)
    with ThreadPoolExecutor(4) as pool:
        pods = list(pool.map(lambda _: lab.netns("mpod"), range(endpoints)))

    def add(i: int) -> str:
        ep = client.request(
            "PUT",
            "/v1/endpoints",
            {
                "containerID": f"bench-{uuid.uuid4().hex}",
                "ifname": "eth0",
                "netns": pods[i].path,
            },
        )
        return ep["ipv4"].split("/")[0]  # type: ignore[index]

    with ThreadPoolExecutor(4) as pool:
        ips = list(pool.map(add, range(endpoints)))
    body = [
        {
            "frontend": f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}:80",
            "backends": [f"{ips[(i + k) % len(ips)]}:8080" for k in range(3)],
        }
        for i in range(services)
    ]
    client.request("POST", "/v1/services/batch", body)
    return ips


def scrape(node: Node, n: int, interval: float) -> dict:
    url = f"http://127.0.0.1:{PORT}/metrics"
    r = node.ns.exec([sys.executable, "-S", "-c", SCRAPER, str(n), str(interval), url])
    return json.loads(r.stdout)


def datapath_read_ms(node: Node, n: int) -> float:
    """The datapath's part of a scrape, as the agent reads it (fresh map fill each time)."""
    c = DatapathCollector(node.cfg.bpffs_root, MapPressure(node.cfg.bpffs_root, max_age=0))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        list(c.collect())
        times.append((time.perf_counter() - t) * 1000)
    c.close()
    return median(times)


def measure(lab: Lab, problems: list[str], args: argparse.Namespace) -> None:
    scrapes, stretch, rounds = (10, 5, 1) if args.quick else (40, 15, 3)
    node = Node(
        pod_cidr="10.200.0.0/20",
        prometheusListen=f"127.0.0.1:{PORT}",
        ctGCInterval=300,
        ctGCMaxInterval=300,
    )
    lab.on_close(node.close)
    node.start_agent()
    assert node.proc is not None
    pid = node.proc.pid  # nsenter execs the agent
    t = time.perf_counter()
    populate(node, lab, args.endpoints, args.services)
    setup_s = time.perf_counter() - t
    status = node.porin_json("status")
    print(
        f"node with {status['endpoints']['ready']} endpoints and {status['services']} "
        f"services (set up in {setup_s:.0f} s)"
    )
    scrape(node, 3, 0)  # warm
    whole = scrape(node, scrapes, 0)
    scrape_ms = median(whole["ms"])
    dp_ms = datapath_read_ms(node, scrapes)
    # agent CPU: stretches without and with one scrape per second, interleaved
    idle, busy = [], []
    for _ in range(rounds):
        c0 = agent_cpu_seconds(pid)
        time.sleep(stretch)
        idle.append((agent_cpu_seconds(pid) - c0) / stretch)
        c0, t0 = agent_cpu_seconds(pid), time.monotonic()
        scrape(node, stretch, 1.0)
        busy.append((agent_cpu_seconds(pid) - c0) / (time.monotonic() - t0))
    idle_pct, busy_pct = 100 * median(idle), 100 * median(busy)
    rows = [
        [
            "scrape of /metrics, median",
            f"{scrape_ms:.1f} ms",
            f"target < {SCRAPE_TARGET_MS:.0f}",
        ],
        ["  p90", f"{sorted(whole['ms'])[int(0.9 * len(whole['ms'])) - 1]:.1f} ms", ""],
        ["  datapath part (maps, fill)", f"{dp_ms:.1f} ms", ""],
        ["  body", f"{whole['bytes'] / 1024:.0f} KiB, {whole['series']} series", ""],
        ["agent CPU, no scrapes", f"{idle_pct:.2f} % of a CPU", ""],
        ["agent CPU, 1 scrape/s", f"{busy_pct:.2f} % of a CPU", ""],
        ["  cost of scraping", f"{busy_pct - idle_pct:.2f} % of a CPU", ""],
    ]
    print(fmt_table(["measure", "value", ""], rows, {1}))
    record("metrics_scrape_ms", scrape_ms)
    record("metrics_datapath_ms", dp_ms)
    record("metrics_scrape_cpu_pct", busy_pct - idle_pct)
    if scrape_ms >= SCRAPE_TARGET_MS:
        problems.append(f"scrape took {scrape_ms:.1f} ms (target < {SCRAPE_TARGET_MS:.0f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer scrapes and shorter stretches")
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--services", type=int, default=10000)
    args = ap.parse_args()
    return run_bench(lambda lab, problems: measure(lab, problems, args))


if __name__ == "__main__":
    sys.exit(main())
