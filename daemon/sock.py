"""bpf_sock.c's socket hooks, attached to the root of the cgroup v2 tree.

They point the node's own sockets that reach a service frontend on a
loopback address (a pod's host port on 127.0.0.1) at the backend, on
connect() and sendmsg(), and translate the peer back on recvmsg() and
getpeername() (bpf/lib/sock.h). The tree spans every network namespace on
the machine, so the agent writes its namespace's cookie to `sock_config`
and the hooks leave other namespaces' sockets alone.

Each hook is a BPF link pinned under `<bpffsRoot>/links/`: it stays attached
while the agent is down, a restart swaps the program in the link in place,
and removing the pins (`--uninstall` removes the bpffs root) detaches it.
Config `loopbackHostPorts: false` leaves the hooks out.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from porin.daemon.config import AgentConfig
from porin.daemon.datapath import SOCK_PROGRAMS, DatapathError, Program
from porin.maps import syscall
from porin.maps.sock_config import SockConfigMap

log = logging.getLogger("porin.sock")

LINKS_DIR = "links"
SO_NETNS_COOKIE = 71  # <asm-generic/socket.h>, Linux 5.14


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 tree is mounted (its root), or None."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) > 4 and fields[3] == "/":
            return fields[4]
    return None


def netns_cookie() -> int:
    """The cookie of this process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, "little")


@dataclass(frozen=True)
class SockState:
    cgroup: str  # "" when the hooks are not attached
    hooks: list[str]
    netns_cookie: int
    why_not: str = ""


class SockDatapath:
    ENTRY = "bpf_sock.c"

    def __init__(self, cfg: AgentConfig, programs: dict[str, Program]) -> None:
        self.cfg = cfg
        self.programs = {n: programs[n] for n in SOCK_PROGRAMS if n in programs}
        self.links_dir = os.path.join(cfg.bpffs_root, LINKS_DIR)
        self.state = SockState("", [], 0, "not attached")

    def attach(self) -> SockState:
        """Attach every hook (or swap its program in place); without a cgroup
        v2 tree, say so and attach nothing: host ports on the loopback then
        do not answer, every other address does."""
        root = cgroup2_root()
        if root is None:
            why = "no cgroup v2 mount: host ports are not served on 127.0.0.1"
            log.warning("%s", why)
            self.state = SockState("", [], 0, why)
            return self.state
        cookie = netns_cookie()
        SockConfigMap(self.cfg.bpffs_root).set(cookie)
        os.makedirs(self.links_dir, exist_ok=True)
        cg = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, prog in self.programs.items():
                self._attach_one(name, prog, cg)
        finally:
            os.close(cg)
        self.state = SockState(root, sorted(self.programs), cookie)
        log.info("socket hooks on cgroup %s: %s", root, ", ".join(sorted(self.programs)))
        return self.state

    def _attach_one(self, name: str, prog: Program, cgroup_fd: int) -> None:
        pin = os.path.join(self.links_dir, name)
        if os.path.exists(pin):
            fd = syscall.obj_get(pin)
            try:
                if syscall.link_prog_id(fd) != syscall.prog_info(prog.fd)[0]:
                    syscall.link_update(fd, prog.fd)
                return
            except OSError as e:  # a link of another kind: start again
                log.warning("cannot reuse the link %s (%s): attaching anew", pin, e)
                os.unlink(pin)
            finally:
                os.close(fd)
        try:
            fd = syscall.link_create(prog.fd, cgroup_fd, SOCK_PROGRAMS[name])
        except OSError as e:
            raise DatapathError(f"cannot attach {name} to the cgroup tree: {e}") from e
        try:
            syscall.obj_pin(fd, pin)
        finally:
            os.close(fd)
