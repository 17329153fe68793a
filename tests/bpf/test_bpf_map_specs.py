"""The map table in daemon/map_specs.py against the maps bcc really creates,
and what the agent does with a pin of the wrong shape."""

from __future__ import annotations

import ctypes
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
        struct ep_val {{ char b[32]; }};
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


def layout(ctype: type, base: int = 0, prefix: str = "") -> list[tuple[str, int, int]]:
    """(name, offset, size) of every scalar or array field, nested structs flattened."""
    out = []
    for name, ftype, *_ in ctype._fields_:
        desc = getattr(ctype, name)
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure | ctypes.Union):
            out += layout(ftype, base + desc.offset, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", base + desc.offset, desc.size))
    return out


def table_of(modules, name: str):
    for module in modules:
        try:
            return module.get_table(name.encode())
        except KeyError:
            continue
    raise AssertionError(f"no program declares map {name}")


def shape(ctype: type) -> list[tuple[int, int]]:
    return [(off, size) for _, off, size in layout(ctype)]


def test_every_map_layout_matches_the_c_struct_field_by_field(lxc_datapath):
    """Porin's alignchecker: the ctypes layout of every map's key and value in
    maps/ against what clang made of the C struct (bcc's Key/Leaf types).
    Offsets, sizes and names; a scalar key or value (a u32 index) by size."""
    dp, modules = lxc_datapath
    root = os.path.dirname(dp.endpoints.path)
    checked = []
    for spec in map_specs(AgentConfig(bpffs_root=root)):
        if spec.key_type is None:
            continue
        table = table_of(modules, spec.name)
        for side, ours, theirs in (
            ("key", spec.key_type, table.Key),
            ("value", spec.value_type, table.Leaf),
        ):
            if issubclass(theirs, ctypes.Array):  # a per-CPU value: one per CPU
                theirs = theirs._type_
            assert ctypes.sizeof(ours) == ctypes.sizeof(theirs), (spec.name, side)
            if not issubclass(theirs, ctypes.Structure):
                continue  # a scalar (u32 index, u8 flag): its size is all there is
            c_fields = layout(theirs)
            assert shape(ours) == [(off, size) for _, off, size in c_fields], (spec.name, side)
            names = [n for n, _, _ in layout(ours)]
            assert names == [n for n, _, _ in c_fields], (spec.name, side)
        checked.append(spec.name)
    assert len(checked) >= 15, checked
