"""Identities and node deregistration against the embedded store."""

from __future__ import annotations

import threading

from porin.daemon.cluster import IPCACHE, NODES, deregister
from porin.daemon.identities import IDENTITIES, Identities
from porin.daemon.kvstore import Event, LocalStore


def test_same_labels_same_identity_distinct_labels_distinct(tmp_path):
    store = LocalStore(str(tmp_path / "kv.json"))
    ids = Identities(store)
    a = ids.allocate({"app": "web", "ns": "shop"})
    assert a >= 256
    assert ids.allocate({"ns": "shop", "app": "web"}) == a  # order does not matter
    b = ids.allocate({"app": "db"})
    assert b != a
    # persisted: a new allocator on the same store file finds them
    again = Identities(LocalStore(str(tmp_path / "kv.json")))
    assert again.allocate({"app": "web", "ns": "shop"}) == a
    listed = {i["id"]: i["labels"] for i in again.list()}
    assert listed[a] == {"app": "web", "ns": "shop"} and 1 in listed and 2 in listed


def test_racing_allocators_never_share_an_id():
    store = LocalStore()
    results: dict[int, int] = {}

    def alloc(i: int) -> None:
        results[i] = Identities(store).allocate({"pod": str(i % 10)})

    threads = [threading.Thread(target=alloc, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_labels: dict[int, set[int]] = {}
    for i, ident in results.items():
        by_labels.setdefault(i % 10, set()).add(ident)
    assert all(len(v) == 1 for v in by_labels.values())  # one id per label set
    assert len({next(iter(v)) for v in by_labels.values()}) == 10  # ten distinct ids
    assert len(store.get_prefix(IDENTITIES)) == 10


def test_deregister_removes_only_that_nodes_keys():
    store = LocalStore()
    events: list[Event] = []
    store.watch_prefix("/porin/", events.append)
    store.put(NODES + "n1", {"name": "n1"})
    store.put(NODES + "n2", {"name": "n2"})
    store.put(IPCACHE + "10.244.1.2", {"node": "n1", "identity": 256})
    store.put(IPCACHE + "10.244.2.2", {"node": "n2", "identity": 256})
    assert deregister(store, "n1") == 2
    assert set(store.get_prefix("/porin/")) == {NODES + "n2", IPCACHE + "10.244.2.2"}
    assert [e.key for e in events if e.kind == "delete"] == [IPCACHE + "10.244.1.2", NODES + "n1"]
    assert deregister(store, "n1") == 0
