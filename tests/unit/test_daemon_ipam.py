"""daemon/ipam.py: the agent's round-robin, persisted IPv4 allocator."""

from __future__ import annotations

import ipaddress
import json
import threading
from pathlib import Path

import pytest

from porin.daemon.ipam import Ipam, IpamExhausted


def small(state_dir: Path, cidr: str = "10.0.0.0/29", gateway: str = "10.0.0.1") -> Ipam:
    return Ipam(cidr, gateway, str(state_dir))


def test_first_allocation_skips_network_and_gateway(tmp_path: Path) -> None:
    assert small(tmp_path).allocate("a") == "10.0.0.2"


def test_never_hands_out_network_broadcast_or_gateway(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    got = []
    while True:
        try:
            got.append(ipam.allocate(f"owner-{len(got)}"))
        except IpamExhausted:
            break
    assert sorted(got, key=ipaddress.IPv4Address) == [f"10.0.0.{i}" for i in range(2, 7)]
    assert "10.0.0.0" not in got
    assert "10.0.0.1" not in got
    assert "10.0.0.7" not in got
    assert ipam.capacity == len(got) == 5


def test_gateway_elsewhere_in_the_cidr_is_skipped(tmp_path: Path) -> None:
    ipam = small(tmp_path, gateway="10.0.0.4")
    got = set()
    with pytest.raises(IpamExhausted):
        for i in range(10):
            got.add(ipam.allocate(f"o{i}"))
    assert got == {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"}


def test_smallest_network_has_one_address(tmp_path: Path) -> None:
    ipam = small(tmp_path, cidr="10.0.0.0/30")
    assert ipam.capacity == 1
    assert ipam.allocate("a") == "10.0.0.2"
    with pytest.raises(IpamExhausted):
        ipam.allocate("b")


def test_same_owner_gets_same_address(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    first = ipam.allocate("pod-a")
    ipam.allocate("pod-b")
    assert ipam.allocate("pod-a") == first
    assert ipam.allocate("pod-a") == first
    assert ipam.owner_of(first) == "pod-a"
    assert list(ipam.allocations().values()).count("pod-a") == 1


def test_same_owner_gets_its_address_even_when_full(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    addrs = [ipam.allocate(f"o{i}") for i in range(5)]
    assert ipam.allocate("o3") == addrs[3]


def test_distinct_owners_get_distinct_addresses(tmp_path: Path) -> None:
    ipam = small(tmp_path, cidr="10.0.0.0/24")
    addrs = [ipam.allocate(f"o{i}") for i in range(100)]
    assert len(set(addrs)) == 100
    net = ipaddress.IPv4Network("10.0.0.0/24")
    assert all(ipaddress.IPv4Address(a) in net for a in addrs)


def test_exhaustion_raises_with_a_message(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    for i in range(5):
        ipam.allocate(f"o{i}")
    with pytest.raises(IpamExhausted) as excinfo:
        ipam.allocate("one-too-many")
    assert "10.0.0.0/29" in str(excinfo.value)
    assert "no free address" in str(excinfo.value)
    assert isinstance(excinfo.value, RuntimeError)
    assert "one-too-many" not in ipam.allocations().values()


def test_release_frees_the_address(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    addrs = [ipam.allocate(f"o{i}") for i in range(5)]
    assert ipam.release("o2") == [addrs[2]]
    assert ipam.owner_of(addrs[2]) is None
    assert addrs[2] not in ipam.allocations()
    # the only free address is the released one
    assert ipam.allocate("new") == addrs[2]
    assert ipam.owner_of(addrs[2]) == "new"


def test_release_unknown_owner_is_a_no_op(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    a = ipam.allocate("a")
    assert ipam.release("nobody") == []
    assert ipam.allocations() == {a: "a"}


def test_release_twice(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    a = ipam.allocate("a")
    assert ipam.release("a") == [a]
    assert ipam.release("a") == []


def test_round_robin_does_not_reuse_a_released_address_at_once(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    a = ipam.allocate("a")  # .2
    b = ipam.allocate("b")  # .3
    ipam.release("a")
    c = ipam.allocate("c")
    assert c not in (a, b)
    assert c == "10.0.0.4"
    ipam.release("c")
    d = ipam.allocate("d")
    assert d not in (a, c)
    assert d == "10.0.0.5"


def test_round_robin_wraps_around(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    for i in range(5):
        ipam.allocate(f"o{i}")  # .2 .. .6
    ipam.release("o0")  # .2
    ipam.release("o1")  # .3
    # past .6 it wraps, skipping broadcast .7, network .0 and gateway .1
    assert ipam.allocate("x") == "10.0.0.2"
    assert ipam.allocate("y") == "10.0.0.3"


def test_allocations_is_a_copy(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    a = ipam.allocate("a")
    snap = ipam.allocations()
    snap.clear()
    assert ipam.allocations() == {a: "a"}


# --- persistence -------------------------------------------------------------


def test_state_is_written_to_ipam_json(tmp_path: Path) -> None:
    ipam = small(tmp_path)
    a = ipam.allocate("a")
    data = json.loads((tmp_path / "ipam.json").read_text())
    assert data["cidr"] == "10.0.0.0/29"
    assert data["allocations"] == {a: "a"}
    assert data["last"] == int(ipaddress.IPv4Address(a))


def test_allocations_survive_a_restart(tmp_path: Path) -> None:
    first = small(tmp_path, cidr="10.0.0.0/24")
    a = first.allocate("pod-a")
    b = first.allocate("pod-b")
    second = small(tmp_path, cidr="10.0.0.0/24")
    assert second.allocations() == {a: "pod-a", b: "pod-b"}
    assert second.allocate("pod-a") == a
    assert second.allocate("pod-b") == b
    c = second.allocate("pod-c")
    assert c not in (a, b)


def test_release_survives_a_restart(tmp_path: Path) -> None:
    first = small(tmp_path)
    first.allocate("a")
    first.allocate("b")
    first.release("a")
    assert small(tmp_path).allocations() == {"10.0.0.3": "b"}


def test_round_robin_position_survives_a_restart(tmp_path: Path) -> None:
    first = small(tmp_path)
    first.allocate("a")  # .2
    b = first.allocate("b")  # .3
    first.release("b")
    second = small(tmp_path)
    c = second.allocate("c")
    assert c != b
    assert c == "10.0.0.4"


def test_allocations_outside_a_new_cidr_are_dropped(tmp_path: Path) -> None:
    first = small(tmp_path)
    first.allocate("a")
    moved = Ipam("10.1.0.0/29", "10.1.0.1", str(tmp_path))
    assert moved.allocations() == {}
    a = moved.allocate("a")
    assert ipaddress.IPv4Address(a) in ipaddress.IPv4Network("10.1.0.0/29")
    assert a not in ("10.1.0.0", "10.1.0.1", "10.1.0.7")
    assert json.loads((tmp_path / "ipam.json").read_text())["cidr"] == "10.1.0.0/29"


def test_malformed_entries_in_state_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "ipam.json").write_text(
        json.dumps(
            {
                "cidr": "10.0.0.0/29",
                "last": int(ipaddress.IPv4Address("10.0.0.2")),
                "allocations": {"10.0.0.2": "a", "bogus": "b", "10.9.9.9": "c"},
            }
        )
    )
    ipam = small(tmp_path)
    assert ipam.allocations() == {"10.0.0.2": "a"}
    assert ipam.allocate("d") == "10.0.0.3"


# --- threads -----------------------------------------------------------------


def test_concurrent_allocations_are_distinct(tmp_path: Path) -> None:
    ipam = small(tmp_path, cidr="10.244.0.0/24", gateway="10.244.0.1")
    results: dict[str, str] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(50)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[f"pod-{i}"] = ipam.allocate(f"pod-{i}")
        except BaseException as e:  # surfaced below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not failures
    assert len(results) == 50
    assert len(set(results.values())) == 50
    reserved = {"10.244.0.0", "10.244.0.1", "10.244.0.255"}
    assert not reserved & set(results.values())
    assert ipam.allocations() == {ip: owner for owner, ip in results.items()}
    # and all 50 reached the state file
    assert small(tmp_path, cidr="10.244.0.0/24", gateway="10.244.0.1").allocations() == (
        ipam.allocations()
    )


def test_concurrent_allocations_for_one_owner_agree(tmp_path: Path) -> None:
    ipam = small(tmp_path, cidr="10.244.0.0/24", gateway="10.244.0.1")
    got: list[str] = []
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()
        got.append(ipam.allocate("same"))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 20
    assert len(set(got)) == 1
    assert len(ipam.allocations()) == 1
