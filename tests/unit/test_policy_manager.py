"""The policy manager on in-memory maps: all-or-nothing applies, incremental
reconciles equal to full ones, revisions only where something changed."""

from __future__ import annotations

import random
from typing import Any

import pytest

from porin.daemon import policy as policy_mod
from porin.daemon.kvstore import LocalStore
from porin.daemon.policy import PolicyManager, PolicyTooLarge
from porin.daemon.policy_yaml import PolicyError
from porin.maps.policy import PolicyMapKey
from porin.models import Endpoint


class FakeValue:
    def __init__(self, rule_id: int, deny: bool) -> None:
        self.rule_id, self.flags, self.packets, self.bytes = rule_id, 1 if deny else 0, 0, 0


class FakePolicyMap:
    def __init__(self, root: str) -> None:
        self.path = f"{root}/policy"
        self.data: dict[PolicyMapKey, FakeValue] = {}

    def write(self, key: PolicyMapKey, rule_id: int, deny: bool) -> None:
        self.data[key] = FakeValue(rule_id, deny)

    def remove(self, key: PolicyMapKey) -> bool:
        return self.data.pop(key, None) is not None

    def entries(self) -> list[tuple[PolicyMapKey, FakeValue]]:
        return list(self.data.items())


class FakeCidrMap:
    def __init__(self, root: str) -> None:
        self.data: dict[str, int] = {}

    def write(self, cidr: str, ident: int) -> None:
        self.data[cidr] = ident

    def remove(self, cidr: str) -> bool:
        return self.data.pop(cidr, None) is not None

    def entries(self) -> dict[str, int]:
        return dict(self.data)


def endpoint(i: int, app: str, ns: str = "x") -> Endpoint:
    return Endpoint(
        id=i,
        container_id=f"c{i}",
        ifname="eth0",
        netns="/n",
        network="porin",
        ipv4=f"10.1.0.{i}/32",
        gateway="10.1.0.254",
        mtu=1500,
        host_ifname=f"lxc{i}",
        state="ready",
        identity=300 + i,
        labels={"k8s:io.kubernetes.pod.namespace": ns, "app": app},
    )


@pytest.fixture
def mgr(monkeypatch, tmp_path):
    monkeypatch.setattr(policy_mod, "PolicyMap", FakePolicyMap)
    monkeypatch.setattr(policy_mod, "PolicyCidrMap", FakeCidrMap)
    eps = [endpoint(i, f"app{i % 4}") for i in range(1, 13)]
    idents = [
        {"id": e.identity, "labels": {"io.kubernetes.pod.namespace": "x", "app": e.labels["app"]}}
        for e in eps
    ]
    refreshed: list[int] = []
    m = PolicyManager(
        str(tmp_path),
        str(tmp_path),
        per_endpoint_limit=50,
        total_limit=500,
        cidr_limit=10,
        local_endpoints=lambda: eps,
        identities=lambda: idents,
        remote_ports=lambda: {},
        refresh_endpoints=refreshed.extend,
    )
    m.refreshed = refreshed  # type: ignore[attr-defined]
    m.eps = eps  # type: ignore[attr-defined]
    m.start(LocalStore(str(tmp_path / "kv.json")))
    yield m
    m.stop()


def np_doc(name: str, subject: str, peer: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"app": subject}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                    "ports": [{"port": port}],
                }
            ],
        },
    }


def entries(m: PolicyManager) -> dict[PolicyMapKey, tuple[int, int]]:
    return {k: (v.rule_id, v.flags) for k, v in m.map.entries()}  # type: ignore[attr-defined]


def test_incremental_reconciles_end_where_a_full_one_does(mgr):
    rng = random.Random(3)
    for step in range(40):
        name = f"p{rng.randrange(6)}"
        if rng.random() < 0.25 and name in {p["name"] for p in mgr.list()}:
            mgr.delete("x", name)
        else:
            mgr.apply(
                [
                    np_doc(
                        name,
                        f"app{rng.randrange(4)}",
                        f"app{rng.randrange(4)}",
                        rng.choice([80, 81, 443]),
                    )
                ]
            )
        got = entries(mgr)
        flags = {i: p.flags for i, p in mgr.programmed.items()}
        mgr.reconcile()  # a full one
        assert entries(mgr) == got, f"step {step}"
        assert {i: p.flags for i, p in mgr.programmed.items()} == flags


def test_a_change_moves_only_the_revisions_of_the_endpoints_it_selects(mgr):
    mgr.apply([np_doc("a", "app1", "app2", 80), np_doc("b", "app3", "app2", 80)])
    revs = {i: p.rev for i, p in mgr.programmed.items()}
    mgr.refreshed.clear()
    mgr.apply([np_doc("a", "app1", "app2", 8080)])
    moved = {i for i, p in mgr.programmed.items() if p.rev != revs[i]}
    assert moved == {e.id for e in mgr.eps if e.labels["app"] == "app1"}
    assert sorted(mgr.refreshed) == sorted(moved)
    # the same document again: nothing changes
    revs = {i: p.rev for i, p in mgr.programmed.items()}
    assert mgr.apply([np_doc("a", "app1", "app2", 8080)])["unchanged"] == ["NetworkPolicy x/a"]
    assert {i: p.rev for i, p in mgr.programmed.items()} == revs


def test_one_bad_document_or_one_too_large_applies_nothing(mgr):
    mgr.apply([np_doc("a", "app1", "app2", 80)])
    before = entries(mgr)
    bad = np_doc("b", "app1", "app2", 80)
    bad["spec"]["ingress"][0]["ports"][0]["port"] = 0
    with pytest.raises(PolicyError, match="document 2"):
        mgr.apply([np_doc("c", "app0", "app1", 80), bad])
    huge = np_doc("d", "app1", "app2", 80)
    huge["spec"]["ingress"][0]["ports"] = [{"port": p} for p in range(1000, 1100)]
    with pytest.raises(PolicyTooLarge, match="policyEntriesPerEndpoint allows 50"):
        mgr.apply([np_doc("c", "app0", "app1", 80), huge])
    assert entries(mgr) == before
    assert [p["name"] for p in mgr.list()] == ["a"]
    assert mgr.store.get_prefix(policy_mod.POLICIES).keys() == {
        policy_mod.POLICIES + "NetworkPolicy/x/a"
    }


def test_a_removed_endpoints_late_event_does_not_take_its_ids_new_owner(mgr):
    mgr.apply([np_doc("a", "app1", "app2", 80)])
    old = next(e for e in mgr.eps if e.labels["app"] == "app1")
    # the id goes to a new endpoint before the old one's removal event arrives
    new = endpoint(old.id, "app1")
    new.container_id = "new"
    assert mgr.state_for(new) is not None
    kept = {k for k in mgr.map.data if k.ep_id == old.id}  # type: ignore[attr-defined]
    mgr.forget(old)
    assert {k for k in mgr.map.data if k.ep_id == old.id} == kept and kept  # type: ignore[attr-defined]
