"""daemon/identities.py: usage, release after the grace period, and the races."""

from __future__ import annotations

from collections import Counter

import pytest

from porin.daemon import identities as mod
from porin.daemon.cluster import deregister
from porin.daemon.identities import (
    IDENTITIES,
    IDENTITY_USERS,
    Identities,
    labels_key,
)
from porin.daemon.kvstore import LocalStore

WEB, DB = {"app": "web"}, {"app": "db"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(mod.time, "monotonic", c)
    return c


def node(store: LocalStore, name: str, usage: Counter, grace: float = 60.0) -> Identities:
    return Identities(store, node=name, grace=grace, local_usage=lambda: usage)


def allocated(store: LocalStore) -> set[int]:
    return {int(k[len(IDENTITIES) :]) for k in store.get_prefix(IDENTITIES)}


def test_an_identity_in_use_anywhere_is_kept_an_unused_one_released_after_grace(clock):
    store = LocalStore()
    a_use, b_use = Counter(), Counter()
    a, b = node(store, "a", a_use), node(store, "b", b_use)
    web = a.allocate(WEB)
    db = b.allocate(DB)
    a_use[web] = 2
    b_use[db] = 1
    clock.now += mod.PENDING_SECONDS + 1  # the allocations' own marks expire
    a.publish_usage(), b.publish_usage()
    assert {x["id"]: x.get("endpoints") for x in a.list_with_usage()}[web] == 2
    assert a.collect() == [] and b.collect() == []
    # db's only endpoint goes: released once unused for the grace period, by either node
    b_use.clear()
    b.publish_usage()
    assert a.collect() == [] and b.collect() == []
    clock.now += 59
    assert a.collect() == []
    row = next(x for x in a.list_with_usage() if x["id"] == db)
    assert (row["endpoints"], row["releasedInSeconds"]) == (0, 1)
    clock.now += 1
    assert a.collect() == [db]
    assert allocated(store) == {web}
    assert b.collect() == []  # already gone for the other node too
    assert labels_key(DB) not in store.get_prefix(labels_key(DB))


def test_a_released_id_is_never_handed_out_again(clock):
    store = LocalStore()
    use = Counter()
    ids = node(store, "a", use)
    first = ids.allocate(WEB)
    clock.now += mod.PENDING_SECONDS + 1
    ids.publish_usage()  # as the collector's loop does before each pass
    ids.collect()
    clock.now += 61
    assert ids.collect() == [first]
    again = ids.allocate(WEB)  # the same labels come back: a new id
    assert again > first
    assert ids.allocate(DB) > again


def test_an_identity_allocated_by_a_pod_still_being_created_is_not_released(clock):
    store = LocalStore()
    ids = node(store, "a", Counter(), grace=1.0)  # the endpoint is not READY yet: no usage
    web = ids.allocate(WEB)
    for _ in range(5):
        clock.now += 2
        assert ids.collect() == []
    assert store.get_prefix(f"{IDENTITY_USERS}{web}/") == {
        f"{IDENTITY_USERS}{web}/a": {"endpoints": 1}
    }


def test_an_allocation_racing_the_release_keeps_the_id_or_gets_a_new_one(clock):
    """The collector deletes the label key, then looks at the users again."""
    store = LocalStore()
    use = Counter()
    collector, allocator = node(store, "a", Counter()), node(store, "b", use)
    web = allocator.allocate(WEB)
    clock.now += mod.PENDING_SECONDS + 1
    allocator.publish_usage()
    collector.collect()
    clock.now += 61
    # an endpoint of WEB appears on b right after the collector deleted the label key
    real_delete = store.delete

    def delete(key: str) -> None:
        real_delete(key)
        if key == labels_key(WEB):
            use[web] = 1
            allocator.publish_usage()

    store.delete = delete  # type: ignore[method-assign]
    assert collector.collect() == []
    store.delete = real_delete  # type: ignore[method-assign]
    assert allocated(store) == {web}
    assert store.get_prefix(labels_key(WEB)) == {labels_key(WEB): web}  # put back
    # and the other order: released first, then an allocation of the same labels
    use.clear()
    allocator.publish_usage()
    collector.collect()
    clock.now += 61
    assert collector.collect() == [web]
    assert allocator.allocate(WEB) not in (web, 0)  # its cached id was released: a new one


def test_a_node_that_leaves_takes_its_use_with_it(clock):
    store = LocalStore()
    use = Counter()
    ids = node(store, "a", use)
    web = ids.allocate(WEB)
    use[web] = 1
    ids.publish_usage()
    assert deregister(store, "a") == 1
    clock.now += mod.PENDING_SECONDS + 1
    other = node(store, "b", Counter())
    other.collect()
    clock.now += 61
    assert other.collect() == [web]


def test_publish_removes_stale_keys_of_this_node_only(clock):
    store = LocalStore()
    store.put(f"{IDENTITY_USERS}300/a", {"endpoints": 4})  # from before a restart
    store.put(f"{IDENTITY_USERS}300/b", {"endpoints": 1})
    node(store, "a", Counter()).publish_usage()
    assert set(store.get_prefix(IDENTITY_USERS)) == {f"{IDENTITY_USERS}300/b"}


def test_the_mark_of_an_allocation_ends_when_its_endpoint_counts(clock):
    store = LocalStore()
    use = Counter()
    ids = node(store, "a", use, grace=1.0)
    web = ids.allocate(WEB)
    use[web] = 1  # the endpoint is ready
    ids.publish_usage()
    use.clear()  # and deleted again, long before PENDING_SECONDS
    ids.publish_usage()
    ids.collect()
    clock.now += 1
    assert ids.collect() == [web]


class AwayStore(LocalStore):
    """A store whose etcd went away: every call fails, as EtcdStore's do."""

    away = False

    def _fail(self):
        if self.away:
            raise mod.KvStoreError("etcd http://198.18.0.2:2379: get failed")

    def get_prefix(self, prefix):
        self._fail()
        return super().get_prefix(prefix)

    def put(self, key, value, lease=None):
        self._fail()
        super().put(key, value, lease)

    def create(self, key, value):
        self._fail()
        return super().create(key, value)

    def delete(self, key):
        self._fail()
        super().delete(key)


def test_with_the_kvstore_away_a_known_identity_is_handed_out_a_new_one_is_not(clock):
    store = AwayStore()
    ids = node(store, "a", Counter())
    web = ids.allocate(WEB)
    store.away = True
    assert ids.allocate(WEB) == web  # pods of a label set in use here can still come
    with pytest.raises(mod.KvStoreError):
        ids.allocate(DB)  # a new label set needs the cluster to agree on its id
    store.away = False
    assert ids.allocate(DB) not in (web, 0)


def test_with_the_kvstore_away_labels_another_node_uses_get_their_identity_after_a_restart(
    clock, tmp_path
):
    """The cluster's identities as last listed (the policy engine lists them
    on every reconcile) are kept in the state dir: a pod whose labels only
    another node used can start during an outage, on an agent restarted in it."""
    store = AwayStore()
    a = node(store, "a", Counter())
    web = a.allocate(WEB)
    path = str(tmp_path / "identities-known.json")
    b = Identities(store, node="b", local_usage=Counter, known_path=path)
    b.list()
    store.away = True
    restarted = Identities(store, node="b", local_usage=Counter, known_path=path)
    assert restarted.allocate(WEB) == web
    with pytest.raises(mod.KvStoreError):
        restarted.allocate(DB)  # known nowhere: the cluster must agree on it first


def test_an_identity_given_while_away_and_released_meanwhile_is_replaced_on_reconnection(clock):
    store = AwayStore()
    ids = node(store, "a", Counter())
    web = ids.allocate(WEB)
    store.away = True
    assert ids.allocate(WEB) == web
    store.away = False
    assert ids.revalidate() == {}  # still allocated: nothing moves
    store.away = True
    assert ids.allocate(WEB) == web
    store.away = False
    # meanwhile another node's collector released it (its users had gone)
    store.delete(labels_key(WEB))
    store.delete(IDENTITIES + str(web))
    moved = ids.revalidate()
    assert list(moved) == [mod.canonical_labels(WEB)] and moved[mod.canonical_labels(WEB)] > web
    assert ids.revalidate() == {}  # checked once
