#!/usr/bin/env python3
"""Pods added and deleted through the CNI plugin, as runtimes do, under faults.

    hack/soak [--cycles N] [--parallel P] [--seed S] [-o json]

One lab node (a namespace with its own agent, its state dir on a small
tmpfs). Each cycle draws a fault (the seed is printed: the same seed gives
the same faults in the same order):

  plain          ADD, later DEL
  kill-add       the plugin killed at a random moment of ADD, then the
                 runtime's DEL (as kubelet does after a failed ADD)
  kill-del       the plugin killed at a random moment of DEL, then DEL again
  agent-kill     the agent SIGKILLed in the middle of an ADD, restarted,
                 then the runtime's DEL
  netns-gone     the pod's netns deleted before its DEL
  del-twice      DEL repeated
  add-twice      ADD repeated for the same container (same result)
  burst          up to P ADDs at once (default 32), then their DELs
  disk-full      the state dir full: ADD fails with a clear error and
                 leaves nothing; works again once space returns

Some pods stay alive across cycles (up to 8), so reachability means
something. Every 100 cycles and at the end nothing may be left without its
pod: no veth, address lease, endpoint record, endpoints map entry, local
ipcache entry or pending-delete file; every live pod answers a ping; and
the agent's memory (RSS) and open file descriptors are sampled, their slope
per 100 cycles reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from porinlab import CNI_PLUGIN_DIRS, VENV_BIN, Netns, Node, Pod, run, wait_for

FAULTS = {
    "plain": 30,
    "kill-add": 10,
    "kill-del": 10,
    "agent-kill": 4,
    "netns-gone": 8,
    "del-twice": 8,
    "add-twice": 8,
    "burst": 3,
    "disk-full": 2,
}
KEEP_ALIVE = 8
STATE_TMPFS = "4m"


@dataclass
class SoakResult:
    seed: int
    cycles: int = 0
    faults: Counter = field(default_factory=Counter)
    checks: int = 0
    leaks: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    rss_kb: list[tuple[int, int]] = field(default_factory=list)  # (cycle, RSS)
    fds: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def slope(points: list[tuple[int, int]]) -> float:
        """Least-squares slope per 100 cycles."""
        if len(points) < 2:
            return 0.0
        n = len(points)
        mx = sum(x for x, _ in points) / n
        my = sum(y for _, y in points) / n
        var = sum((x - mx) ** 2 for x, _ in points)
        if not var:
            return 0.0
        return 100 * sum((x - mx) * (y - my) for x, y in points) / var

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "cycles": self.cycles,
            "faults": dict(self.faults),
            "checks": self.checks,
            "leaks": self.leaks,
            "unreachable": self.unreachable,
            "errors": self.errors,
            "rssKiBPer100Cycles": round(self.slope(self.rss_kb[1:]), 1),
            "fdsPer100Cycles": round(self.slope(self.fds[1:]), 2),
            "rssKiB": [r for _, r in self.rss_kb],
            "fds": [f for _, f in self.fds],
        }


class Soak:
    def __init__(self, seed: int, parallel: int, log: Any = print) -> None:
        self.rnd = random.Random(seed)
        self.parallel = parallel
        self.log = log
        self.res = SoakResult(seed)
        self.node = Node(pod_cidr="10.248.0.0/22")
        state = self.node.cfg.state_dir
        os.makedirs(state, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={STATE_TMPFS}", "tmpfs", state])
        self.live: list[Pod] = []

    def close(self) -> None:
        try:
            self.node.close()
        finally:
            run(["umount", "-l", self.node.cfg.state_dir], check=False)

    # ---------- the runtime's calls ----------

    def _cni(self, command: str, pod: Pod, kill_after: float | None = None) -> int | None:
        """One CNI call as a runtime makes it; killed after `kill_after` s if given
        (then None)."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.container_id,
            "CNI_NETNS": pod.ns.path,
            "CNI_IFNAME": pod.ifname,
            "CNI_PATH": ":".join(CNI_PLUGIN_DIRS),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        proc = subprocess.Popen(
            ["nsenter", f"--net={self.node.ns.path}", str(VENV_BIN / "porin-cni")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        conf = json.dumps(self.node.netconf()).encode()
        try:
            if kill_after is None:
                out, _ = proc.communicate(conf, timeout=120)
                pod.result = json.loads(out) if out.strip() and command == "ADD" else pod.result
                return proc.returncode
            assert proc.stdin is not None
            proc.stdin.write(conf)
            proc.stdin.close()
            proc.stdin = None  # written and closed: communicate() has nothing to send
            time.sleep(kill_after)  # the fault is the moment itself, not a wait for a state
            proc.kill()
            proc.communicate(timeout=30)
            return None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _new_pod(self) -> Pod:
        import uuid

        return Pod(
            ns=Netns(kind="soak"),
            container_id=f"s{uuid.uuid4().hex}",
            ifname="eth0",
            node=self.node,
        )

    def _add(self, pod: Pod) -> None:
        rc = self._cni("ADD", pod)
        if rc != 0:
            raise RuntimeError(f"ADD failed ({rc}): {pod.result}\n{self.node.log()[-2000:]}")

    def _del(self, pod: Pod, close: bool = True) -> None:
        rc = self._cni("DEL", pod)
        if rc != 0:
            raise RuntimeError(f"DEL failed ({rc})\n{self.node.log()[-2000:]}")
        if close:
            pod.ns.close()

    def _keep_or_del(self, pod: Pod) -> None:
        """Keep the pod for a while, or delete it at once; retire the oldest."""
        if self.rnd.random() < 0.5:
            self.live.append(pod)
            if len(self.live) > KEEP_ALIVE:
                self._del(self.live.pop(0))
        else:
            self._del(pod)

    # ---------- faults ----------

    def plain(self) -> None:
        pod = self._new_pod()
        self._add(pod)
        self._keep_or_del(pod)

    def kill_add(self) -> None:
        pod = self._new_pod()
        self._cni("ADD", pod, kill_after=self.rnd.uniform(0.0, 0.4))
        self._del(pod)

    def kill_del(self) -> None:
        pod = self._new_pod()
        self._add(pod)
        self._cni("DEL", pod, kill_after=self.rnd.uniform(0.0, 0.3))
        self._del(pod)

    def agent_kill(self) -> None:
        pod = self._new_pod()
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            add = ex.submit(self._cni, "ADD", pod)
            time.sleep(self.rnd.uniform(0.0, 0.3))  # the moment of the kill is the fault
            self.node.stop_agent(signal.SIGKILL)
            add.result(timeout=120)
        self.node.start_agent()
        self._del(pod)

    def netns_gone(self) -> None:
        pod = self._new_pod()
        self._add(pod)
        pod.ns.close()
        self._del(pod, close=False)

    def del_twice(self) -> None:
        pod = self._new_pod()
        self._add(pod)
        self._del(pod, close=False)
        self._del(pod)

    def add_twice(self) -> None:
        pod = self._new_pod()
        self._add(pod)
        first = pod.result
        self._add(pod)
        if pod.result != first:
            self.res.errors.append(f"a repeated ADD answered {pod.result}, first {first}")
        self._keep_or_del(pod)

    def burst(self) -> None:
        pods = [self._new_pod() for _ in range(self.rnd.randint(2, self.parallel))]
        with concurrent.futures.ThreadPoolExecutor(len(pods)) as ex:
            list(ex.map(self._add, pods))
            list(ex.map(self._del, pods))

    def disk_full(self) -> None:
        # the agent's background deletions (veths being reaped) free space in the
        # state dir when they finish: let them finish first, or the ADD fits
        wait_for(self._reaped, 30, "earlier DELs' veths to be reaped")
        filler = Path(self.node.cfg.state_dir) / "filler"
        with open(filler, "wb", buffering=0) as f:
            for chunk in (65536, 4096, 512, 1):  # to the last byte the tmpfs has
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        try:
            pod = self._new_pod()
            rc = self._cni("ADD", pod)
            if rc == 0:
                self.res.errors.append("ADD succeeded with the state dir full")
                self._del(pod)
            else:
                msg = (pod.result or {}).get("msg", "")
                if "space" not in msg.lower():
                    self.res.errors.append(f"ADD on a full state dir said {pod.result}")
                self._del(pod)  # the runtime's DEL after a failed ADD
        finally:
            filler.unlink()
        self.plain()  # and it works again

    # ---------- checks ----------

    def check(self, cycle: int) -> None:
        self.res.checks += 1
        node = self.node
        eps = node.porin_json("endpoint", "list")
        live_ids = {p.container_id for p in self.live}
        got_ids = {e["containerID"] for e in eps}
        for cid in got_ids - live_ids:
            self.res.leaks.append(f"cycle {cycle}: endpoint of {cid} without its pod")
        host_ifs = {e["hostIfname"] for e in eps if "hostIfname" in e}
        for link in node.links():
            if link.startswith("lxc") and link not in host_ifs:
                self.res.leaks.append(f"cycle {cycle}: veth {link} without its pod")
        ips = {e["ipv4"].split("/")[0] for e in eps}
        ipam = Path(node.cfg.state_dir) / "ipam.json"
        leased = (
            set(json.loads(ipam.read_text()).get("allocations", {})) if ipam.exists() else set()
        )
        for ip in leased - ips:
            self.res.leaks.append(f"cycle {cycle}: address lease {ip} without its pod")
        records = Path(node.cfg.state_dir) / "endpoints"
        n_records = len(list(records.glob("*.json"))) if records.is_dir() else 0
        if n_records != len(eps):
            self.res.leaks.append(f"cycle {cycle}: {n_records} endpoint records, {len(eps)} pods")
        for e in node.porin_json("bpf", "endpoint", "list"):
            if e["ip"] not in ips:
                self.res.leaks.append(f"cycle {cycle}: endpoints map entry {e['ip']}")
        for e in node.porin_json("bpf", "ipcache", "list"):
            ip = e["prefix"].split("/")[0]
            if ip.startswith("10.248.") and e["prefix"].endswith("/32") and ip not in ips:
                if ip != node.porin_json("status")["gateway"]:
                    self.res.leaks.append(f"cycle {cycle}: ipcache entry {e['prefix']}")
        pending = Path(node.cfg.socket).parent / "pending-delete"
        if pending.is_dir() and any(pending.iterdir()):
            self.res.leaks.append(f"cycle {cycle}: pending-delete files {os.listdir(pending)}")
        for p in self.live:
            if not (p.result and node.ns.exec(
                ["ping", "-c", "1", "-W", "2", p.ip], check=False
            ).returncode == 0):  # fmt: skip
                self.res.unreachable.append(f"cycle {cycle}: live pod {p.container_id}")
        pid = self._agent_pid()
        rss = next(
            int(line.split()[1])
            for line in open(f"/proc/{pid}/status")
            if line.startswith("VmRSS:")
        )
        self.res.rss_kb.append((cycle, rss))
        self.res.fds.append((cycle, len(os.listdir(f"/proc/{pid}/fd"))))
        self.log(
            f"cycle {cycle}: {len(eps)} pods, leaks {len(self.res.leaks)}, "
            f"RSS {rss} KiB, fds {self.res.fds[-1][1]}"
        )

    def _agent_pid(self) -> int:
        assert self.node.proc is not None
        return self.node.proc.pid

    # ---------- the run ----------

    def run(self, cycles: int) -> SoakResult:
        self.node.start_agent()
        self.check(0)
        kinds = list(FAULTS)
        weights = [FAULTS[k] for k in kinds]
        for cycle in range(1, cycles + 1):
            kind = self.rnd.choices(kinds, weights)[0]
            self.res.faults[kind] += 1
            try:
                getattr(self, kind.replace("-", "_"))()
            except Exception as e:
                self.res.errors.append(f"cycle {cycle} ({kind}): {e}")
                if not self._agent_alive():
                    self.node.start_agent()
            self.res.cycles = cycle
            if cycle % 100 == 0 or cycle == cycles:
                wait_for(self._settled, 30, "DELs handed over to settle")
                self.check(cycle)
        for p in self.live:
            self._del(p)
        self.live = []
        wait_for(self._settled, 30, "the last DELs to settle")
        self.check(cycles)
        return self.res

    def _reaped(self) -> bool:
        eps = {e["hostIfname"] for e in self.node.porin_json("endpoint", "list")}
        return {link for link in self.node.links() if link.startswith("lxc")} <= eps

    def _agent_alive(self) -> bool:
        try:
            return self.node.healthy()
        except Exception:
            return False

    def _settled(self) -> bool:
        """DELs left for a stopped agent are processed by the running one."""
        pending = Path(self.node.cfg.socket).parent / "pending-delete"
        return not (pending.is_dir() and any(pending.iterdir()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=32, help="most ADDs at once (burst)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"hack/soak: seed {seed} (replay with --seed {seed})", file=sys.stderr, flush=True)
    soak = Soak(seed, args.parallel, log=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        res = soak.run(args.cycles)
    finally:
        soak.close()
    out = res.to_json()
    if args.output == "json":
        print(json.dumps(out, indent=2))
    else:
        print(f"cycles {res.cycles}, faults {dict(res.faults)}")
        print(
            f"leaks {len(res.leaks)}, unreachable {len(res.unreachable)}, errors {len(res.errors)}"
        )
        print(
            f"agent RSS {out['rssKiBPer100Cycles']} KiB and fds {out['fdsPer100Cycles']} "
            "per 100 cycles"
        )
        for x in res.leaks[:20] + res.unreachable[:20] + res.errors[:20]:
            print(f"FAIL {x}")
    return 1 if res.leaks or res.unreachable or res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
