"""The map table in daemon/map_specs.py against the maps bcc really creates,
and what the agent does with a pin of the wrong shape."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from bcc import BPF

from porin.daemon.config import AgentConfig
from porin.daemon.map_specs import map_specs, pinned_shape, reconcile_pins


def test_every_pinned_map_matches_its_spec(lxc_datapath):
    dp, _modules = lxc_datapath
    root = os.path.dirname(dp.endpoints.path)
    specs = map_specs(AgentConfig(bpffs_root=root))
    assert sorted(os.listdir(root)) == sorted(s.name for s in specs)
    for spec in specs:
        assert pinned_shape(os.path.join(root, spec.name)) == spec, spec.name


@pytest.fixture
def pin_root():
    root = f"/sys/fs/bpf/pltest-{uuid.uuid4().hex[:8]}"
    os.makedirs(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_reconcile_unpins_only_maps_of_another_shape(pin_root):
    cfg = AgentConfig(bpffs_root=pin_root, endpoints_map_size=1024)
    module = BPF(
        text=f"""
        struct ep_key {{ u32 ip; }};
        struct ep_val {{ char b[28]; }};
        BPF_TABLE_PINNED("hash", struct ep_key, struct ep_val, endpoints, 1024,
                         "{pin_root}/endpoints");
        BPF_TABLE_PINNED("hash", u32, u64, ct4_global, 16, "{pin_root}/ct4_global");
        """.encode()
    )
    try:
        eps = module[b"endpoints"]
        key, val = eps.Key(), eps.Leaf()
        key.ip = 0x0A0000F4
        eps[key] = val
        assert reconcile_pins(cfg) == ["ct4_global"]
        assert not os.path.exists(f"{pin_root}/ct4_global")
        assert len(eps.items()) == 1  # the matching map and its entries stay
        assert reconcile_pins(cfg) == []
        # the same pin under a config that sizes it differently
        assert reconcile_pins(AgentConfig(bpffs_root=pin_root, endpoints_map_size=2048)) == [
            "endpoints"
        ]
    finally:
        module.cleanup()
