"""What the benchmarks share: pinning, noise readings, the RR tool, tables, clean-up."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from porinlab import Netns

CPU = "1"


def quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as e:  # keep cleaning up
        print(f"cleanup: {e}", file=sys.stderr)


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Signals:
    """SIGINT/SIGTERM raise KeyboardInterrupt, except while cleaning up."""

    interrupted = False
    cleaning = False

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        cls.interrupted = True
        if not cls.cleaning:
            raise KeyboardInterrupt(f"signal {signum}")


RR_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv, send = c.recv, c.send
    while True:
        b = recv(1)
        if not b:
            break
        send(b)
    c.close()
"""

RR_CLIENT = r"""
import json, socket, sys, time
ip, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = socket.create_connection((ip, port), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.settimeout(None)
send, recv, msg, clock = c.send, c.recv, b"x", time.perf_counter
for _ in range(200):  # warm-up: neighbour entries, caches, scheduler
    send(msg); recv(1)
n, start = 0, clock()
end = start + duration
while True:
    for _ in range(250):
        send(msg)
        if not recv(1):
            sys.exit("server closed the connection")
    n += 250
    now = clock()
    if now >= end:
        break
c.close()
print(json.dumps({"transactions": n, "ok": n, "errors": 0, "stalls": 0, "seconds": now - start}))
"""


class Lab:
    """Owns every object a benchmark makes; `close()` removes them in reverse order."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def on_close(self, fn: Callable[[], Any]) -> None:
        self._stack.callback(quietly, fn)

    def netns(self, kind: str) -> Netns:
        ns = Netns(kind=kind)
        self.on_close(ns.close)
        return ns

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # a terminal Ctrl-C reaches us, we stop it
        )
        self.on_close(lambda: stop_process(proc))
        return proc

    def close(self) -> None:
        self._stack.close()


def in_ns(ns: Netns, cmd: list[str]) -> list[str]:
    """`cmd` pinned to CPU, run inside `ns` (nsenter and taskset both exec)."""
    return ["nsenter", f"--net={ns.path}", "taskset", "-c", CPU, *cmd]


def cpu_ticks() -> dict[str, tuple[int, int, int]]:
    """(busy, total, steal) jiffies since boot, for "cpu" (all) and each "cpuN"."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu"):
                break  # the cpu lines come first
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            out[name] = (sum(v) - v[3] - v[4], sum(v), v[7])
    return out


def busy_pct(before: dict[str, tuple[int, int, int]], cpus: list[str]) -> float:
    """Average busy % of `cpus` since the `before` snapshot."""
    after = cpu_ticks()
    busy = sum(after[c][0] - before[c][0] for c in cpus if c in after)
    total = sum(after[c][1] - before[c][1] for c in cpus if c in after)
    return 100.0 * busy / max(1, total)


def steal_pct(before: dict[str, tuple[int, int, int]], cpu: str = "cpu") -> float:
    """% of `cpu`'s time ("cpu": the machine's) the hypervisor gave to others since `before`."""
    after = cpu_ticks()[cpu]
    return 100.0 * (after[2] - before[cpu][2]) / max(1, after[1] - before[cpu][1])


RECORDED: dict[str, Any] = {"tables": [], "values": {}}


def record(name: str, value: float) -> None:
    """Keep a figure for PORIN_BENCH_JSON (hack/bench-ab compares two builds' files)."""
    RECORDED["values"][name] = value


def _dump_recorded() -> None:
    path = os.environ.get("PORIN_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump(RECORDED, f)


atexit.register(_dump_recorded)


def fmt_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    """A boxed text table; columns in `right` are right-aligned. Every table
    printed is also kept for PORIN_BENCH_JSON."""
    RECORDED["tables"].append({"header": header, "rows": rows})
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    return "\n".join([line, fmt(header), line, *(fmt(r) for r in rows), line])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def tune_client(ns: Netns) -> None:
    """Room for many short connections: wide port range, TIME_WAIT ports reusable."""
    ns.exec(["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])
    ns.exec(["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])


def run_bench(measure: Callable[[Lab, list[str]], None]) -> int:
    """Run `measure(lab, problems)`, remove what it made, print each problem it
    noted (an exception is one): the exit status, 0 when every target was met."""
    lab = Lab()
    problems: list[str] = []
    try:
        measure(lab, problems)
    except Exception as e:  # a benchmark reports, it does not trace back
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        lab.close()
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0
