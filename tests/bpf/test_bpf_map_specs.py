"""The map table in daemon/map_specs.py against the maps bcc really creates,
and what the agent does with a pin of the wrong shape."""

from __future__ import annotations

import ctypes
import os
import shutil
import uuid

import pytest
from bcc import BPF

from porin.daemon import map_migrate
from porin.daemon.config import AgentConfig
from porin.daemon.map_specs import map_specs, pinned_shape, reconcile_pins
from porin.maps import map_types
from porin.maps.pinned import PinnedMap


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


def test_a_map_this_build_retired_is_unpinned_with_why(pin_root, caplog):
    cfg = AgentConfig(bpffs_root=pin_root)
    module = BPF(  # xdp_actions as the previous release made it
        text=f"""
        BPF_TABLE_PINNED("percpu_array", u32, u64, xdp_actions, 5, "{pin_root}/xdp_actions");
        """.encode()
    )
    module.cleanup()
    with caplog.at_level("WARNING"):
        assert reconcile_pins(cfg) == ["xdp_actions"]
    assert not os.path.exists(f"{pin_root}/xdp_actions")
    assert "no longer used" in caplog.text and "xdp_metrics" in caplog.text
    assert reconcile_pins(cfg) == []


def test_a_map_the_agent_refills_is_not_reported_lost(pin_root, caplog):
    cfg = AgentConfig(bpffs_root=pin_root)
    module = BPF(  # prefilter4_exact as the previous release made it: counters in the value
        text=f"""
        struct val {{ u64 packets; u64 bytes; }};
        BPF_TABLE_PINNED("hash", u32, struct val, prefilter4_exact, {cfg.prefilter_map_size},
                         "{pin_root}/prefilter4_exact");
        """.encode()
    )
    module.cleanup()
    with caplog.at_level("WARNING"):
        assert reconcile_pins(cfg) == ["prefilter4_exact"]
    assert "the agent refills it from the prefilter list" in caplog.text
    assert "entries are lost" not in caplog.text


class DemoKey(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint32)]


class DemoValueV1(ctypes.Structure):
    _fields_ = [("lifetime", ctypes.c_uint32), ("dropped", ctypes.c_uint32)]


class DemoValue(ctypes.Structure):
    _fields_ = [("added", ctypes.c_uint64), ("lifetime", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class DemoMap(PinnedMap[DemoKey, DemoValue]):
    NAME, TYPE, SIZE = "demo_flows", map_types.HASH, 16
    KEY, VALUE = DemoKey, DemoValue
    PREVIOUS_LAYOUTS = ((DemoKey, DemoValueV1),)

    @classmethod
    def upgrade(cls, old_key, old_value):
        if old_value.lifetime == 0:  # a map may leave some entries behind
            return None
        return super().upgrade(old_key, old_value)


class DemoMapV1(PinnedMap[DemoKey, DemoValueV1]):
    NAME, TYPE, SIZE = "demo_flows", map_types.HASH, 16
    KEY, VALUE = DemoKey, DemoValueV1


def test_entries_of_a_declared_previous_layout_are_carried_over_in_the_new_one(pin_root):
    """What an upgrade that changes a map's value layout does: the old pin is
    parked, the new map created, the entries rewritten field by name."""
    old_c = "struct v { u32 lifetime; u32 dropped; };"
    new_c = "struct v { u64 added; u32 lifetime; u32 pad; };"
    old_shape = (map_types.HASH, 4, 8)
    new_shape = (map_types.HASH, 4, ctypes.sizeof(DemoValue))
    assert map_migrate.can_carry(old_shape, new_shape, DemoMap)
    assert not map_migrate.can_carry((map_types.HASH, 4, 12), new_shape, DemoMap)
    assert not map_migrate.can_carry(old_shape, new_shape, None)

    def pinned(decl: str):
        return BPF(
            text=f"""{decl}
            BPF_TABLE_PINNED("hash", u32, struct v, demo_flows, 16, "{pin_root}/demo_flows");
            int f(void *ctx) {{ return demo_flows.lookup(&(u32){{0}}) != 0; }}
            """.encode()
        )

    old = pinned(old_c)
    try:
        with DemoMapV1(pin_root) as m:
            for ip, lifetime in ((1, 100), (2, 200), (3, 0)):
                m.put(DemoKey(ip=ip), DemoValueV1(lifetime=lifetime, dropped=7))
    finally:
        old.cleanup()
    map_migrate.park(pin_root, "demo_flows")
    new = pinned(new_c)
    try:
        with DemoMap(pin_root) as m:
            m.put(DemoKey(ip=2), DemoValue(lifetime=999))  # the new programs' entry wins
        assert map_migrate.carry_over(pin_root, final=True, maps={"demo_flows": DemoMap}) == {
            "demo_flows": 1
        }
        with DemoMap(pin_root) as m:
            got = {k.ip: (v.added, v.lifetime) for k, v in m.items()}
        assert got == {1: (0, 100), 2: (0, 999)}  # ip 3 left behind by upgrade()
        assert not os.path.exists(map_migrate.parked_dir(pin_root))
    finally:
        new.cleanup()


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
