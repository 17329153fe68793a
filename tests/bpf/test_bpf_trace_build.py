"""The trace build (bpf/lib/trace.h, `porin trace`) of every entry program
loads: its notes must stay within the verifier's budget on the programs that
are closest to it."""

from __future__ import annotations

import os
import shutil
import uuid

from porin.daemon.compiler import entries_for, trace_config
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import build_flags, compile_entry
from porin.daemon.map_specs import reconcile_pins


def test_the_trace_build_of_every_entry_program_loads():
    # dsr: the most code on the paths nearest the budget (DSR replies in
    # from_container, DSR decapsulation in from_netdev)
    root = f"/sys/fs/bpf/pltrace-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig(
        bpffs_root=root,
        devices=["eth0"],
        kvstore={"endpoints": ["http://127.0.0.1:1"]},
        tunnel="vxlan",
        node_port_mode="dsr",
    )
    tcfg = trace_config(cfg)
    try:
        os.makedirs(tcfg.bpffs_root)
        reconcile_pins(tcfg)
        loaded = []
        for entry, names in entries_for(cfg).items():
            if entry == "bpf_sock.c":
                continue
            _module, progs = compile_entry(entry, [*build_flags(tcfg), "-DPORIN_TRACE=1"], names)
            loaded += list(progs)
        assert {"from_container", "from_netdev", "from_overlay", "from_xdp"} <= set(loaded)
        # the trace build's maps are its own: under <root>/trace, none in the live root
        assert os.path.exists(os.path.join(tcfg.bpffs_root, "trace_notes"))
        assert os.listdir(root) == ["trace"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
