#!/usr/bin/env python3
"""Pods added and deleted through the CNI plugin, as runtimes do, under faults.

    hack/soak [--cycles N] [--parallel P] [--seed S] [-o json]
              [--nodes N [--outage S] [--outage-every C]]

One lab node (a namespace with its own agent, its state dir on a small
tmpfs), or N nodes sharing a real etcd (hack/soak_cluster.py: the kvstore
stopped for S seconds every C cycles while pods, services and policies
change). Each cycle draws a fault (the seed is printed: the same seed gives
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
  kvstore-outage (several nodes, every C cycles) etcd stopped for S s

Some pods stay alive across cycles (up to 8), so reachability means
something. Every 100 cycles and at the end nothing may be left without its
pod: no veth, address lease, endpoint record, endpoints map entry, local
ipcache entry or pending-delete file; every live pod answers a ping; and
the agent's memory (RSS) and open file descriptors are sampled, their slope
per 100 cycles reported. On several nodes, also: no ipcache key in the
kvstore without its pod, and every node's ipcache map knows every live pod
and no gone one.
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
from pathlib import Path
from typing import Any

import soak_checks
import soak_cluster
from porinlab import CNI_PLUGIN_DIRS, VENV_BIN, Netns, Node, Pod, run, wait_for
from soak_checks import SoakResult

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


class Soak:
    def __init__(
        self,
        seed: int,
        parallel: int,
        log: Any = print,
        nodes: int = 1,
        outage: float = 60.0,
        outage_every: int = 100,
    ) -> None:
        self.rnd = random.Random(seed)
        self.parallel = parallel
        self.log = log
        self.res = SoakResult(seed)
        self.outage = outage
        self.outage_every = outage_every
        self.lab: soak_cluster.Lab | None = None
        if nodes > 1:
            self.lab = soak_cluster.Lab(nodes)
            self.nodes = self.lab.nodes
        else:
            self.nodes = [Node(pod_cidr="10.248.0.0/22")]
        self.mounted: list[str] = []
        try:
            for node in self.nodes:
                state = node.cfg.state_dir
                os.makedirs(state, exist_ok=True)
                run(["mount", "-t", "tmpfs", "-o", f"size={STATE_TMPFS}", "tmpfs", state])
                self.mounted.append(state)
        except BaseException:
            self.close()
            raise
        self.live: list[Pod] = []
        self.anchors: list[Pod] = []  # the conversation's two pods, for the whole run
        # what the outages' changes should have left on every node
        self.services: dict[int, list[str]] = {}
        self.policies: set[str] = set()

    def close(self) -> None:
        for p in self.all_pods():  # a run that failed leaves its pods' namespaces
            p.ns.close()
        try:
            if self.lab is not None:
                self.lab.close()
            else:
                self.nodes[0].close()
        finally:
            for state in self.mounted:
                run(["umount", "-l", state], check=False)

    def all_pods(self) -> list[Pod]:
        return self.live + self.anchors

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
            ["nsenter", f"--net={pod.node.ns.path}", str(VENV_BIN / "porin-cni")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        conf = json.dumps(pod.node.netconf()).encode()
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

    def _new_pod(self, node: Node | None = None) -> Pod:
        import uuid

        return Pod(
            ns=Netns(kind="soak"),
            container_id=f"s{uuid.uuid4().hex}",
            ifname="eth0",
            node=node or self._some_node(),
        )

    def _some_node(self) -> Node:
        # one node draws nothing: a seed replays the same run as before --nodes
        return self.nodes[0] if len(self.nodes) == 1 else self.rnd.choice(self.nodes)

    def _add(self, pod: Pod) -> None:
        rc = self._cni("ADD", pod)
        if rc != 0:
            raise RuntimeError(f"ADD failed ({rc}): {pod.result}\n{pod.node.log()[-2000:]}")

    def _del(self, pod: Pod, close: bool = True) -> None:
        rc = self._cni("DEL", pod)
        if rc != 0:
            raise RuntimeError(f"DEL failed ({rc})\n{pod.node.log()[-2000:]}")
        if close:
            pod.ns.close()

    def _keep(self, pod: Pod) -> None:
        """Keep the pod for a while; retire the oldest."""
        self.live.append(pod)
        if len(self.live) > KEEP_ALIVE:
            self._del(self.live.pop(0))

    def _keep_or_del(self, pod: Pod) -> None:
        """Keep the pod for a while, or delete it at once."""
        if self.rnd.random() < 0.5:
            self._keep(pod)
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
            pod.node.stop_agent(signal.SIGKILL)
            add.result(timeout=120)
        pod.node.start_agent()
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
        node = self._some_node()  # as many ADDs at once on one node
        pods = [self._new_pod(node) for _ in range(self.rnd.randint(2, self.parallel))]
        with concurrent.futures.ThreadPoolExecutor(len(pods)) as ex:
            list(ex.map(self._add, pods))
            list(ex.map(self._del, pods))

    def disk_full(self) -> None:
        # the agent's background deletions (veths being reaped) free space in the
        # state dir when they finish: let them finish first, or the ADD fits
        node = self._some_node()
        wait_for(lambda: self._reaped(node), 30, "earlier DELs' veths to be reaped")
        filler = Path(node.cfg.state_dir) / "filler"
        with open(filler, "wb", buffering=0) as f:
            for chunk in (65536, 4096, 512, 1):  # to the last byte the tmpfs has
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        try:
            pod = self._new_pod(node)
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
        pod = self._new_pod(node)  # and it works again
        self._add(pod)
        self._keep_or_del(pod)

    def kvstore_outage(self) -> None:
        assert self.lab is not None
        res = soak_cluster.Outage(self, self.outage).run()
        self.res.outages.append(res)
        self.log(
            f"kvstore outage of {res.seconds:.0f} s: {dict(res.ops)}, converged in "
            f"{res.converge_s if res.converge_s is None else round(res.converge_s, 2)} s, "
            f"longest silence of the conversation {res.longest_silence_s:.2f} s"
        )

    # ---------- checks ----------

    def check(self, cycle: int) -> None:
        soak_checks.check(self, cycle)

    def _agent_pid(self, node: Node) -> int:
        assert node.proc is not None
        return node.proc.pid

    # ---------- the run ----------

    def _start(self) -> None:
        for node in self.nodes:  # one at a time: each compiles on both CPUs
            node.start_agent()
        if self.lab is not None:
            a, b = self._new_pod(self.nodes[0]), self._new_pod(self.nodes[1])
            for pod in (a, b):
                self._add(pod)
                self.anchors.append(pod)
            wait_for(lambda: a.ping(b.ip), 15, "the anchor pods to reach each other")
            self.lab.conversation = soak_cluster.Conversation(a, b)

    def run(self, cycles: int) -> SoakResult:
        self._start()
        self.check(0)
        kinds = [k for k in FAULTS]
        weights = [FAULTS[k] for k in kinds]
        for cycle in range(1, cycles + 1):
            if self.lab is not None and cycle % self.outage_every == self.outage_every // 2:
                kind = "kvstore-outage"  # on a schedule, not drawn: each is long
            else:
                kind = self.rnd.choices(kinds, weights)[0]
            self.res.faults[kind] += 1
            try:
                getattr(self, kind.replace("-", "_"))()
            except Exception as e:
                self.res.errors.append(f"cycle {cycle} ({kind}): {e}")
                for node in self.nodes:
                    if not self._agent_alive(node):
                        # one that no longer answers is killed first: never two agents
                        node.stop_agent(signal.SIGKILL)
                        node.start_agent()
                if self.lab is not None and not self.lab.etcd.healthy():
                    self.lab.etcd.start()
            self.res.cycles = cycle
            if cycle % 100 == 0 or cycle == cycles:
                wait_for(self._settled, 30, "DELs handed over to settle")
                self.check(cycle)
        for p in self.live:
            self._del(p)
        self.live = []
        for sid in list(self.services):
            r = self.nodes[0].porin("service", "delete", str(sid), check=False)
            if r.returncode:
                self.res.errors.append(f"deleting service {sid}: {r.stderr.strip()}")
            del self.services[sid]
        for name in sorted(self.policies):
            ref = f"{soak_cluster.POLICY_NS}/{name}"
            r = self.nodes[0].porin("policy", "delete", ref, check=False)
            if r.returncode:
                self.res.errors.append(f"deleting policy {ref}: {r.stderr.strip()}")
        self.policies.clear()
        wait_for(self._settled, 30, "the last DELs to settle")
        self.check(cycles)
        if self.lab is not None:
            try:
                wait_for(self._converged, soak_cluster.CONVERGE_S, "the last changes to spread")
            except TimeoutError:
                self.res.errors += soak_cluster.state_diff(self)
        return self.res

    def _converged(self) -> bool:
        return not soak_cluster.state_diff(self)

    def _reaped(self, node: Node) -> bool:
        eps = {e["hostIfname"] for e in node.porin_json("endpoint", "list")}
        return {link for link in node.links() if link.startswith("lxc")} <= eps

    def _agent_alive(self, node: Node) -> bool:
        try:
            return node.healthy()
        except Exception:
            return False

    def _settled(self) -> bool:
        """DELs left for a stopped agent are processed by the running one."""
        for node in self.nodes:
            pending = Path(node.cfg.socket).parent / "pending-delete"
            if pending.is_dir() and any(pending.iterdir()):
                return False
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=32, help="most ADDs at once (burst)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--nodes", type=int, default=1, help="nodes sharing a real etcd")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds etcd is away")
    ap.add_argument("--outage-every", type=int, default=100, help="cycles between outages")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.outage_every < 2:
        ap.error("--nodes must be at least 1 and --outage-every at least 2")
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"hack/soak: seed {seed} (replay with --seed {seed})", file=sys.stderr, flush=True)
    soak = Soak(
        seed,
        args.parallel,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        nodes=args.nodes,
        outage=args.outage,
        outage_every=args.outage_every,
    )
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
        if out["rssKiBPer100Cycles"] is None:
            print("agent RSS and fds: too few samples for a slope (one every 100 cycles)")
        else:
            print(
                f"agent RSS {out['rssKiBPer100Cycles']} KiB and fds {out['fdsPer100Cycles']} "
                "per 100 cycles"
            )
        for o in out["outages"]:
            print(
                f"kvstore outage {o['seconds']} s: {o['ops']}; converged in "
                f"{o['convergeSeconds']} s; the conversation's longest silence "
                f"{o['longestSilenceSeconds']} s"
            )
        for x in res.leaks[:20] + res.unreachable[:20] + res.errors[:20]:
            print(f"FAIL {x}")
    return 1 if res.leaks or res.unreachable or res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
