"""Identities and node deregistration against the embedded store."""

from __future__ import annotations

import threading

from porin.daemon.cluster import IPCACHE, NODES, ClusterState, NodeInfo, deregister
from porin.daemon.endpoints import EndpointManager
from porin.daemon.events import EndpointRelabeled, EventBus
from porin.daemon.identities import IDENTITIES, Identities, canonical_labels
from porin.daemon.kvstore import Event, LocalStore
from porin.daemon.selectors import identity_labels
from porin.models import Endpoint, EndpointState


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


class _Ipcache:
    """The ipcache map's interface, in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    def entries(self) -> list:
        return list(self.rows.values())

    def upsert(self, e) -> None:
        self.rows[e.prefix] = e

    def remove(self, prefix: str) -> None:
        self.rows.pop(prefix, None)


def _endpoint(ip: str, identity: int = 300) -> Endpoint:
    return Endpoint(
        id=1, container_id="c-" + ip, ifname="eth0", netns="/x", network="porin",
        ipv4=f"{ip}/32", gateway="10.244.1.1", mtu=1450, host_ifname="lxc1",
        state=EndpointState.READY, identity=identity,
    )  # fmt: skip


def test_connect_drops_this_nodes_keys_for_pods_gone_while_away():
    """A pod deleted while etcd (or the agent) was away left its key; with a lease
    of minutes it would linger, so the next connection removes it, and only ours."""
    store = LocalStore()
    store.put(IPCACHE + "10.244.1.5", {"node": "n1", "identity": 300})  # still here
    store.put(IPCACHE + "10.244.1.6", {"node": "n1", "identity": 300})  # went meanwhile
    store.put(IPCACHE + "10.244.2.5", {"node": "n2", "identity": 300})  # another node's
    local = [_endpoint("10.244.1.5")]
    cs = ClusterState(
        store, _Ipcache(), NodeInfo("n1", "198.18.0.11", "10.244.1.0/24", "vxlan"), 900,
        local_endpoints=lambda: local, apply_service=lambda s: None,
        drop_service=lambda i: None, local_services=list,
    )  # fmt: skip
    cs.shared = True  # publish as against etcd
    cs._connect()
    assert set(store.get_prefix(IPCACHE)) == {IPCACHE + "10.244.1.5", IPCACHE + "10.244.2.5"}
    assert store.get_prefix(NODES)[NODES + "n1"]["ip"] == "198.18.0.11"


def _cluster(store, local_endpoints) -> ClusterState:
    return ClusterState(
        store, _Ipcache(), NodeInfo("n1", "198.18.0.11", "10.244.1.0/24", "vxlan"), 900,
        local_endpoints=local_endpoints, apply_service=lambda s: None,
        drop_service=lambda i: None, local_services=list,
    )  # fmt: skip


def test_a_remote_pod_is_learnt_while_an_add_holds_the_endpoint_manager():
    """An ADD holds the endpoint manager's lock and then asks the cluster state
    for the other nodes' named ports; an ipcache event holds the cluster
    state's lock while it programs the ipcache, local endpoints included. If
    that waited for the manager, both would wait for ever (the agent hung in a
    multi-node soak when etcd came back during an ADD)."""
    manager = EndpointManager.__new__(EndpointManager)  # only its lock and table
    manager._lock = threading.RLock()
    manager._eps = {1: _endpoint("10.244.1.5")}
    store = LocalStore()
    cs = _cluster(store, manager.ready)
    cs._connect()
    with manager._lock:  # the ADD, holding the manager
        event = threading.Thread(
            target=store.put,
            args=(IPCACHE + "10.244.2.7", {"node": "n2", "identity": 301}),
            daemon=True,
        )
        event.start()
        event.join(timeout=10)
        assert not event.is_alive(), "the ipcache event waited for the endpoint manager"
        assert cs.remote_named_ports() == {}  # and the ADD gets its answer
    assert cs.remote_ips["10.244.2.7"]["identity"] == 301
    assert "10.244.1.5/32" in cs.ipcache.rows


class _HangingStore(LocalStore):
    """An etcd that accepts connections and never answers (a partition)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.entered = threading.Event()

    def create(self, key, value):
        self.entered.set()
        self.hang.wait(10)
        return super().create(key, value)


def test_a_reconnection_that_hangs_keeps_no_add_waiting():
    store = _HangingStore()
    cs = _cluster(store, lambda: [])
    cs.shared = True
    t = threading.Thread(target=cs._connect, daemon=True)
    t.start()
    try:
        assert store.entered.wait(10)
        asked = threading.Thread(target=cs.remote_named_ports, daemon=True)
        asked.start()
        asked.join(timeout=5)
        assert not asked.is_alive(), "an ADD waited for the kvstore through the cluster lock"
    finally:
        store.hang.set()
        t.join(timeout=10)
    assert cs.connected


def test_an_endpoint_whose_identity_was_released_while_away_takes_the_new_one():
    class Rows(dict):
        def upsert(self, e):
            self[e.ip] = e

        def save(self, ep_id, record):
            self[ep_id] = record

    manager = EndpointManager.__new__(EndpointManager)
    manager._lock = threading.RLock()
    web, db = _endpoint("10.244.1.5", identity=300), _endpoint("10.244.1.6", identity=301)
    web.labels, db.labels, db.id = {"app": "web"}, {"app": "db"}, 2
    manager._eps = {1: web, 2: db}
    manager.map, manager.store = Rows(), Rows()
    manager.policy_state = lambda ep: (0, 0)
    manager.events = EventBus()
    seen = []
    manager.events.subscribe(EndpointRelabeled, seen.append)
    manager.identities_moved({canonical_labels(identity_labels(web.labels)): 310})
    assert (web.identity, db.identity) == (310, 301)
    assert manager.map["10.244.1.5"].identity == 310 and "10.244.1.6" not in manager.map
    assert manager.store[1]["identity"] == 310
    assert [(e.endpoint.id, e.before.identity) for e in seen] == [(1, 300)]
