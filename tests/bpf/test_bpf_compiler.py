"""daemon/compiler.py: programs built in a child process, pinned, and reused
while nothing that goes into them changed."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from porin.daemon.compiler import PROGRAMS_DIR, load_programs
from porin.daemon.config import AgentConfig
from porin.maps import syscall


@pytest.fixture
def root():
    path = f"/sys/fs/bpf/pltest-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def prog_ids(progs) -> dict[str, int]:
    return {name: syscall.prog_info(p.fd)[0] for name, p in progs.items()}


def builds(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, PROGRAMS_DIR)))


def close(progs) -> None:
    for p in progs.values():
        os.close(p.fd)


def test_programs_are_reused_until_a_build_input_changes(root):
    cfg = AgentConfig(bpffs_root=root)
    first = load_programs(cfg)
    assert sorted(first) == [
        "from_container",
        "sock4_connect",
        "sock4_getpeername",
        "sock4_recvmsg",
        "sock4_sendmsg",
        "to_container",
    ]
    (build,) = builds(root)
    again = load_programs(cfg)
    assert prog_ids(again) == prog_ids(first)  # the same loaded programs, no compile
    assert builds(root) == [build]

    changed = AgentConfig(bpffs_root=root, ct_lifetime_tcp=3600)
    rebuilt = load_programs(changed)
    assert set(prog_ids(rebuilt).values()).isdisjoint(prog_ids(first).values())
    assert len(builds(root)) == 1 and builds(root) != [build]  # the old build is gone
    for progs in (first, again, rebuilt):
        close(progs)


def test_a_map_pinned_anew_makes_the_programs_build_again(root):
    cfg = AgentConfig(bpffs_root=root)
    first = load_programs(cfg)
    os.unlink(os.path.join(root, "metrics"))  # as if removed by hand or recreated
    second = load_programs(cfg)
    assert set(prog_ids(second).values()).isdisjoint(prog_ids(first).values())
    fd = syscall.obj_get(os.path.join(root, "metrics"))
    try:
        metrics_id = syscall.map_info(fd).id
    finally:
        os.close(fd)
    assert metrics_id in syscall.prog_info(second["from_container"].fd)[1]
    close(first)
    close(second)
