"""The parsers and lookups compile and work in an XDP program (lib/ctx.h):
the seam XDP NodePort and the prefilter will stand on."""

from __future__ import annotations

import ctypes
from pathlib import Path

from lxc_harness import POD_A, POD_B
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from porin.bpf import SOURCE_DIR
from porin.daemon.bpf_source import flatten
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import build_flags
from porin.maps import syscall
from porin.maps.ipcache import IpcacheEntry
from porin.maps.metrics import reason_by_name
from porin.models import Backend, Service

XDP_DROP, XDP_PASS = 1, 2
PROGRAM = Path(__file__).parent / "progs" / "xdp_seam.c"


def test_parsers_and_lookups_run_in_xdp(lxc, services):
    from bcc import BPF

    root = lxc.endpoints.path.rsplit("/", 1)[0]
    flat = flatten(PROGRAM, include_dir=SOURCE_DIR)
    module = BPF(text=flat.encode(), cflags=build_flags(AgentConfig(bpffs_root=root)))
    try:
        fn = module.load_func(b"xdp_seam", BPF.XDP)
        out = module[b"seam_out"]
        lxc.endpoints.upsert(POD_A)
        lxc.endpoints.upsert(POD_B)
        lxc.ipcache.upsert(IpcacheEntry(f"{POD_B.ip}/32", 4242, ""))
        svc = services.upsert(
            Service(
                id=1, ip="10.96.0.10", port=80, protocol="tcp", backends=[Backend(POD_B.ip, 80)]
            )
        )
        backend_id = services.backend_ids(svc.id)[f"{POD_B.ip}:80"]

        def run(pkt) -> tuple[int, list[int]]:
            ret, _, _ = syscall.prog_test_run(fn.fd, bytes(Ether() / pkt))
            return ret, [out[ctypes.c_int(i)].value for i in range(4)]

        ret, got = run(IP(src=POD_A.ip, dst=POD_B.ip) / TCP(dport=80))
        assert ret == XDP_PASS and got == [0, POD_B.endpoint_id, 4242, 0]
        ret, got = run(IP(src=POD_A.ip, dst="10.96.0.10") / TCP(dport=80))
        assert ret == XDP_PASS and got[3] == backend_id
        ret, got = run(IP(src=POD_A.ip, dst=POD_B.ip, proto=6) / b"\0\0")
        assert ret == XDP_DROP and got[0] == reason_by_name("TRUNCATED").code
    finally:
        module.cleanup()
