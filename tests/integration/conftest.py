"""Real namespaces, a real agent per node, the CNI plugin invoked as a runtime does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from porinlab import Node, wait_for


@pytest.fixture(scope="module")
def node():
    """A node shared by the tests of one module (agent started once)."""
    n = Node(pod_cidr="10.244.0.0/24")
    try:
        n.start_agent()
        yield n
    finally:
        n.close()


@pytest.fixture
def fresh_node():
    """A node of its own, for tests that stop, kill or restart the agent."""
    n = Node(pod_cidr="10.245.0.0/24")
    try:
        n.start_agent()
        yield n
    finally:
        n.close()


class Snapshot:
    """What a CNI call may leave behind on a node: links, IPAM, endpoints, map entries."""

    def __init__(self, node: Node) -> None:
        self.links = sorted(lk for lk in node.links() if lk.startswith("lxc"))
        ipam = Path(node.cfg.state_dir, "ipam.json")
        self.ipam = json.loads(ipam.read_text())["allocations"] if ipam.exists() else {}
        self.endpoints = sorted(e["id"] for e in node.porin_json("endpoint", "list"))
        self.map = sorted(e["ip"] for e in node.porin_json("bpf", "endpoint", "list"))
        self.pending = sorted(
            p.name for p in Path(node.cfg.socket).parent.joinpath("pending-delete").glob("*")
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Snapshot({vars(self)})"


@pytest.fixture
def snapshot():
    return Snapshot


@pytest.fixture
def settled():
    """Assert a node returns to a snapshot (veths are reaped in the background)."""

    def check(node: Node, before: Snapshot, timeout: float = 10.0) -> None:
        last: list[Snapshot] = []

        def same() -> bool:
            last[:] = [Snapshot(node)]
            return last[0] == before

        try:
            wait_for(same, timeout, "the node to return to its snapshot")
        except TimeoutError:
            raise AssertionError(
                f"node did not settle:\n  now    {last}\n  before {before}"
            ) from None

    return check
