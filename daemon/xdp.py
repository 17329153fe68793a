"""bpf_xdp.c on the node's uplinks, in the mode the config asks for.

`xdpMode`: `native` (the driver's hook; start-up fails if the driver
refuses), `generic` (the kernel's, after the skb is made; works on any
device), `best-effort` (native, else generic with a warning; generic on a
veth, see below), `disabled`.
Attaching replaces the program in place (no window without one, also on a
restart); `--uninstall` removes only a program of ours (daemon/uninstall.py).

Native XDP on a veth drops what XDP_TX sends unless the veth's peer has an
XDP program too (an XDP_PASS one is enough), which the node cannot check:
best-effort takes generic mode on a veth, and `xdpMode: native` is for node
networks that allow for it (hack/porinlab.py's does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from porin.daemon.datapath import DatapathError, Program

log = logging.getLogger("porin.xdp")

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
ATTACHED = {1: "native", 2: "generic", 3: "offload"}  # IFLA_XDP_ATTACHED
PROGRAM_NAME = "from_xdp"


@dataclass(frozen=True)
class XdpState:
    device: str
    ifindex: int
    mode: str  # native, generic, offload, or "" (none)
    prog_id: int


def attached(ipr: IPRoute, ifindex: int) -> tuple[str, int]:
    """(mode, program id) of the XDP program on a device; ("", 0) for none."""
    link = ipr.get_links(ifindex)[0]
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return "", 0
    mode = ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED") or 0, "")
    return mode, int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0)


def link_kind(ipr: IPRoute, ifindex: int) -> str:
    info = ipr.get_links(ifindex)[0].get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def set_xdp(ipr: IPRoute, ifindex: int, fd: int, flags: int) -> None:
    ipr.link("set", index=ifindex, xdp={"attrs": [["IFLA_XDP_FD", fd], ["IFLA_XDP_FLAGS", flags]]})


class XdpDatapath:
    ENTRY = "bpf_xdp.c"

    def __init__(self, mode: str, ipr: IPRoute, programs: dict[str, Program]) -> None:
        self.mode = mode
        self.ipr = ipr
        self.program = programs.get(PROGRAM_NAME)
        self.state: list[XdpState] = []

    def attach(self, devices: list[tuple[str, int]]) -> None:
        if self.mode == "disabled" or self.program is None:
            return
        out = []
        for name, ifindex in devices:
            mode = self._attach_one(name, ifindex)
            out.append(XdpState(name, ifindex, mode, attached(self.ipr, ifindex)[1]))
        self.state = out

    def _attach_one(self, name: str, ifindex: int) -> str:
        assert self.program is not None
        have, _ = attached(self.ipr, ifindex)
        wants = {"native": ["native"], "generic": ["generic"], "best-effort": ["native", "generic"]}
        if self.mode == "best-effort" and link_kind(self.ipr, ifindex) == "veth":
            # what native XDP sends back into a veth is dropped unless the other
            # side runs XDP too, which this node cannot know: generic is safe
            log.info("XDP on %s: a veth, generic mode (xdpMode: native to insist)", name)
            wants["best-effort"] = ["generic"]
        last: Exception | None = None
        for mode in wants[self.mode]:
            if have and have != mode:
                # a device holds one XDP program: another mode's goes first
                set_xdp(
                    self.ipr,
                    ifindex,
                    -1,
                    XDP_FLAGS_DRV_MODE if have == "native" else XDP_FLAGS_SKB_MODE,
                )
                have = ""
            flags = XDP_FLAGS_DRV_MODE if mode == "native" else XDP_FLAGS_SKB_MODE
            try:
                set_xdp(self.ipr, ifindex, self.program.fd, flags)  # replaces in place
            except NetlinkError as e:
                last = e
                if self.mode == "best-effort":
                    log.warning("XDP on %s: native mode refused (%s); using generic", name, e)
                continue
            log.info("attached bpf_xdp to %s (ifindex %d, %s mode)", name, ifindex, mode)
            return mode
        raise DatapathError(f"cannot attach XDP to {name} in {self.mode} mode: {last}")

    def status(self) -> list[dict[str, object]]:
        return [
            {"device": s.device, "ifindex": s.ifindex, "mode": s.mode, "progID": s.prog_id}
            for s in self.state
        ]
