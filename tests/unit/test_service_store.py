"""daemon/store.py ServiceStore: snapshot plus journal, what a change costs, crash cases."""

from __future__ import annotations

import json

from porin.daemon.store import ServiceStore


def rec(sid: int, v: int = 0) -> dict:
    return {"id": sid, "frontend": f"10.96.0.{sid}:80", "v": v}


def save(store: ServiceStore, live: dict[int, dict], changed=(), removed=(), nxt=1) -> None:
    for r in changed:
        live[r["id"]] = r
    for sid in removed:
        live.pop(sid, None)
    store.save(list(changed), list(removed), nxt, len(live), lambda: list(live.values()))


def test_a_small_change_appends_one_journal_line_and_leaves_the_snapshot(tmp_path):
    store, live = ServiceStore(str(tmp_path)), {}
    save(store, live, [rec(i) for i in range(1, 101)], nxt=201)  # a batch: a snapshot
    snap = (tmp_path / "services.json").read_bytes()
    save(store, live, [rec(7, v=1)], nxt=202)
    save(store, live, removed=[9])
    assert (tmp_path / "services.json").read_bytes() == snap
    lines = (tmp_path / "services.journal").read_text().splitlines()
    assert [json.loads(x)["upsert"] for x in lines] == [[rec(7, v=1)], []]
    assert json.loads(lines[1])["delete"] == [9]
    nxt, loaded = ServiceStore(str(tmp_path)).load()
    assert nxt == 1 and loaded == [live[k] for k in sorted(live)]
    assert {r["id"]: r["v"] for r in loaded}[7] == 1 and 9 not in {r["id"] for r in loaded}


def test_the_journal_is_folded_into_a_snapshot(tmp_path):
    store, live = ServiceStore(str(tmp_path)), {}
    save(store, live, [rec(i) for i in range(1, 11)])
    for n in range(ServiceStore.COMPACT_MIN + 1):
        save(store, live, [rec(1 + n % 10, v=n)])
    journal = tmp_path / "services.journal"
    lines = journal.read_text().splitlines() if journal.exists() else []
    assert len(lines) < ServiceStore.COMPACT_MIN
    snap = json.loads((tmp_path / "services.json").read_text())
    assert any(r["v"] > 0 for r in snap["services"])  # folded in
    assert ServiceStore(str(tmp_path)).load()[1] == [live[k] for k in sorted(live)]


def test_a_torn_last_line_is_ignored(tmp_path):
    store, live = ServiceStore(str(tmp_path)), {}
    save(store, live, [rec(i) for i in range(1, 5)])
    save(store, live, [rec(2, v=5)])
    with open(tmp_path / "services.journal", "a") as f:
        f.write('{"upsert": [{"id": 3, "v"')  # a crash mid-append
    loaded = {r["id"]: r for r in ServiceStore(str(tmp_path)).load()[1]}
    assert loaded[2]["v"] == 5 and loaded[3] == rec(3)


def test_a_journal_left_over_a_newer_snapshot_replays_to_the_same_state(tmp_path):
    store, live = ServiceStore(str(tmp_path)), {}
    save(store, live, [rec(i) for i in range(1, 5)])
    save(store, live, [rec(1, v=1)])
    save(store, live, removed=[4])
    journal = (tmp_path / "services.journal").read_text()
    save(store, live, [rec(i, v=9) for i in range(1, 4)])  # most of them: a snapshot
    (tmp_path / "services.journal").write_text(journal)  # as if the unlink never happened
    loaded = ServiceStore(str(tmp_path)).load()[1]
    assert loaded == [live[k] for k in sorted(live)]


def test_the_snapshot_older_builds_wrote_is_read(tmp_path):
    (tmp_path / "services.json").write_text(
        json.dumps({"nextBackendId": 42, "services": [rec(3), rec(1)]})
    )
    assert ServiceStore(str(tmp_path)).load() == (42, [rec(1), rec(3)])
