"""daemon/outbox.py: changes kept while the kvstore is away, written in order when it is back."""

from __future__ import annotations

from typing import Any

from porin.daemon.kvstore import KvStoreError, LocalStore
from porin.daemon.outbox import Outbox


class FlakyStore(LocalStore):
    """The embedded store, unreachable while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.commits = 0

    def commit(self, puts: dict[str, Any], deletes: list[str]) -> None:
        if self.down:
            raise KvStoreError("connection refused")
        self.commits += 1
        super().commit(puts, deletes)


def test_written_at_once_while_reachable(tmp_path):
    store = FlakyStore()
    box = Outbox(store, str(tmp_path))
    assert box.write({"/k/a": 1}, []) is True
    assert store.get_prefix("/k/") == {"/k/a": 1} and box.pending() == {}


def test_kept_while_away_coalesced_and_written_in_order_on_flush(tmp_path):
    store = FlakyStore()
    box = Outbox(store, str(tmp_path))
    box.write({"/k/gone": 1, "/k/changed": 1}, [])
    store.down = True
    assert box.write({}, ["/k/gone"]) is False
    assert box.write({"/k/changed": 2}, []) is False
    assert box.write({"/k/new": 3}, []) is False
    assert box.write({"/k/new": 4}, []) is False  # the last write of a key wins
    assert box.pending() == {"/k/gone": None, "/k/changed": 2, "/k/new": 4}
    assert store.get_prefix("/k/") == {"/k/gone": 1, "/k/changed": 1}  # not yet
    assert box.flush() is False  # still away: nothing lost
    store.down = False
    assert box.flush() is True
    assert store.get_prefix("/k/") == {"/k/changed": 2, "/k/new": 4}
    assert box.pending() == {}


def test_an_agent_restarted_during_the_outage_keeps_what_was_pending(tmp_path):
    store = FlakyStore()
    store.put("/k/gone", 1)
    store.down = True
    Outbox(store, str(tmp_path)).write({}, ["/k/gone"])
    again = Outbox(store, str(tmp_path))  # a new agent process
    assert again.pending() == {"/k/gone": None}
    store.down = False
    assert again.flush() and store.get_prefix("/k/") == {}
    assert Outbox(store, str(tmp_path)).pending() == {}


def test_known_offline_writes_are_kept_without_trying(tmp_path):
    store = FlakyStore()
    box = Outbox(store, str(tmp_path))
    box.online = lambda: False
    assert box.write({"/k/a": 1}, []) is False
    assert store.commits == 0  # no wait for the kvstore's timeout
    box.online = lambda: True
    assert box.write({"/k/b": 2}, []) is True  # the earlier one goes first
    assert store.get_prefix("/k/") == {"/k/a": 1, "/k/b": 2}


def test_a_failed_write_while_thought_reachable_is_reported(tmp_path):
    """etcd went away unnoticed (no lease refresh yet): the failed write is
    kept and reported, so that the agent degrades and reconnects, and its
    reconnection writes it; a write while known away reports nothing."""
    store = FlakyStore()
    box = Outbox(store, str(tmp_path))
    failures: list[KvStoreError] = []
    box.on_failure = failures.append
    store.down = True
    assert box.write({"/k/a": 1}, []) is False
    assert len(failures) == 1 and "connection refused" in str(failures[0])
    assert box.write({"/k/b": 2}, []) is False  # still thought reachable: flush fails too
    assert len(failures) == 2
    box.online = lambda: False
    assert box.write({"/k/c": 3}, []) is False
    assert len(failures) == 2 and set(box.pending()) == {"/k/a", "/k/b", "/k/c"}
    store.down = False
    box.online = lambda: True
    assert box.flush() and store.get_prefix("/k/") == {"/k/a": 1, "/k/b": 2, "/k/c": 3}
