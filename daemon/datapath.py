"""Build the C datapath (daemon/compiler.py) and attach it to devices.

Node settings reach the C code as -D build flags; per-endpoint values live
in maps. Maps are pinned under the bpffs root and reused when they exist,
so a restarted agent picks up live state instead of flushing it; programs
are swapped in place with `tc filter replace`, so traffic never sees a
device without a program.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from porin.bpf import SOURCE_DIR
from porin.daemon.bpf_source import flatten
from porin.daemon.config import AgentConfig
from porin.daemon.jiffies import kernel_hz
from porin.daemon.map_specs import reconcile_pins, size_flags

log = logging.getLogger("porin.datapath")

TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
FILTER_PRIO = 1
FILTER_HANDLE = 1


class DatapathError(RuntimeError):
    """Compiling, loading or attaching a program failed."""


@dataclass(frozen=True)
class Program:
    name: str
    fd: int


def build_flags(cfg: AgentConfig) -> list[str]:
    """The -D flags that carry node settings into the C code."""
    return [
        f'-DPIN_ROOT="{cfg.bpffs_root}"',
        *size_flags(cfg),
        f"-DCT_LIFETIME_TCP_SYN={cfg.ct_lifetime_tcp_syn}",
        f"-DCT_LIFETIME_TCP={cfg.ct_lifetime_tcp}",
        f"-DCT_LIFETIME_TCP_CLOSE={cfg.ct_lifetime_tcp_close}",
        f"-DCT_LIFETIME_NONTCP={cfg.ct_lifetime_nontcp}",
        f"-DKERNEL_HZ={kernel_hz()}",
        f"-DNODEPORT_DSR={int(cfg.node_port_mode == 'dsr')}",
        f"-DSNAT_PORT_MIN={cfg.snat_ports[0]}",
        f"-DSNAT_PORT_MAX={cfg.snat_ports[1]}",
        "-Wno-unused-function",
    ]


def compile_programs(
    entry: str, cfg: AgentConfig, names: list[str]
) -> tuple[object, dict[str, Program]]:
    """Compile bpf/<entry> with bcc in this process and load `names` as tc
    programs (the BPF tests and benchmarks; the agent compiles through
    daemon/compiler.py, in a child process).

    Returns the bcc module (keep it alive: it owns the fds) and the programs.
    """
    os.makedirs(cfg.bpffs_root, exist_ok=True)
    try:
        reconcile_pins(cfg)  # bcc would reuse a pin of the wrong shape as it is
    except OSError as e:
        raise DatapathError(f"cannot check the pinned maps: {e}") from e
    return compile_entry(entry, build_flags(cfg), names)


XDP_PROGRAMS = {"from_xdp"}  # bpf_xdp.c's; every other program is a tc one
# bpf_sock.c's: cgroup socket-address programs, by their attach type
# (enum bpf_attach_type), which the kernel wants at load already
SOCK_PROGRAMS = {
    "sock4_connect": 10,  # BPF_CGROUP_INET4_CONNECT
    "sock4_sendmsg": 14,  # BPF_CGROUP_UDP4_SENDMSG
    "sock4_recvmsg": 19,  # BPF_CGROUP_UDP4_RECVMSG
    "sock4_getpeername": 29,  # BPF_CGROUP_INET4_GETPEERNAME
}


def compile_entry(
    entry: str, cflags: list[str], names: list[str]
) -> tuple[object, dict[str, Program]]:
    """Compile bpf/<entry> with `cflags` and load `names` (tc programs, XDP
    ones for the names in XDP_PROGRAMS, cgroup ones for SOCK_PROGRAMS)."""
    from bcc import BPF  # heavy import: never in the agent's own process

    started = time.monotonic()
    text = flatten(SOURCE_DIR / entry)
    try:
        module = BPF(text=text.encode(), cflags=cflags)
        progs = {}
        for name in names:
            if name in SOCK_PROGRAMS:
                fn = module.load_func(
                    name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=SOCK_PROGRAMS[name]
                )
            else:
                kind = BPF.XDP if name in XDP_PROGRAMS else BPF.SCHED_CLS
                fn = module.load_func(name.encode(), kind)
            progs[name] = Program(name=name, fd=fn.fd)
    except Exception as e:
        raise DatapathError(f"cannot compile/load {entry}: {e}") from e
    log.info(
        "compiled %s in %.2fs (programs: %s)", entry, time.monotonic() - started, ", ".join(names)
    )
    return module, progs


class LxcDatapath:
    """bpf_lxc.c: from_container on a pod veth's tc ingress, to_container on egress."""

    ENTRY = "bpf_lxc.c"
    PROGRAMS = ["from_container", "to_container"]

    def __init__(self, cfg: AgentConfig, programs: dict[str, Program]) -> None:
        self.cfg = cfg
        self.programs = {name: programs[name] for name in self.PROGRAMS}

    def attach(self, ipr: IPRoute, ifindex: int) -> None:
        """Attach (or atomically replace) both programs on a host-side veth."""
        ensure_clsact(ipr, ifindex)
        replace_filter(ipr, ifindex, TC_INGRESS, self.programs["from_container"])
        replace_filter(ipr, ifindex, TC_EGRESS, self.programs["to_container"])

    @staticmethod
    def attached(ipr: IPRoute, ifindex: int) -> list[str]:
        """Problems with the attachment on `ifindex`, empty when both programs are there."""
        problems = []
        for parent, name in ((TC_INGRESS, "from_container"), (TC_EGRESS, "to_container")):
            if name not in filter_names(ipr, ifindex, parent):
                where = "ingress" if parent == TC_INGRESS else "egress"
                problems.append(f"program {name} is not attached to tc {where}")
        return problems


def ensure_clsact(ipr: IPRoute, ifindex: int) -> None:
    try:
        ipr.tc("add", "clsact", index=ifindex)
    except NetlinkError as e:
        if e.code != errno.EEXIST:  # already there
            raise DatapathError(f"cannot add clsact qdisc on ifindex {ifindex}: {e}") from e


def replace_filter(ipr: IPRoute, ifindex: int, parent: str, prog: Program) -> None:
    try:
        ipr.tc(
            "replace-filter",
            "bpf",
            index=ifindex,
            handle=FILTER_HANDLE,
            prio=FILTER_PRIO,
            fd=prog.fd,
            name=prog.name,
            parent=parent,
            classid=1,
            direct_action=True,
        )
    except NetlinkError as e:
        raise DatapathError(f"cannot attach {prog.name} to ifindex {ifindex}: {e}") from e


def filter_names(ipr: IPRoute, ifindex: int, parent: str) -> list[str]:
    try:
        msgs = ipr.get_filters(index=ifindex, parent=parent)
    except NetlinkError:
        return []
    names = []
    for m in msgs:
        opts = m.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts else None
        if name:
            names.append(name)
    return names
