"""Crash-safe JSON state under the agent's state dir."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from porin import errors
from porin.errors import PorinError


class StateDirFull(PorinError):
    """The state dir has no room: nothing was written (the old file stands)."""

    def __init__(self, path: str, e: OSError) -> None:
        super().__init__(
            f"the agent's state dir is full, cannot write {path} ({e.strerror}); "
            "nothing was changed: free space there and retry",
            cni_code=errors.TRY_AGAIN,
            http_status=507,
        )


def write_json_atomic(path: str, data: Any) -> None:
    """Write `data` to `path` so a crash leaves the old or the new file, never
    half; a full disk leaves the old file and no temporary one (StateDirFull)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            # compact: the C encoder (an indent forces the slow pure-Python one,
            # which matters for a services.json of 10,000 services)
            f.write(json.dumps(data, sort_keys=True, separators=(",", ":")))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StateDirFull(path, e) from None
        raise


def read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


class EndpointStore:
    """One JSON file per endpoint: <stateDir>/endpoints/<id>.json."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "endpoints")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def _path(self, ep_id: int) -> str:
        return os.path.join(self.dir, f"{ep_id}.json")

    def save(self, ep_id: int, data: dict[str, Any]) -> None:
        write_json_atomic(self._path(ep_id), data)

    def delete(self, ep_id: int) -> None:
        try:
            os.unlink(self._path(ep_id))
        except FileNotFoundError:
            pass

    def load_all(self) -> list[dict[str, Any]]:
        return _load_dir(self.dir)

    # Endpoints being torn down: their veth is deleted in the background. The
    # record moves out of endpoints/ at once (its id may be reused) and stays
    # in deleting/ until the veth is gone, so a crash cannot leak the veth.

    def _deleting_path(self, host_ifname: str) -> str:
        return os.path.join(self.deleting_dir, f"{host_ifname}.json")

    @property
    def deleting_dir(self) -> str:
        d = os.path.join(os.path.dirname(self.dir), "deleting")
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d

    def mark_deleting(self, ep_id: int, data: dict[str, Any]) -> None:
        write_json_atomic(self._deleting_path(data["host_ifname"]), data)
        self.delete(ep_id)

    def deleted(self, host_ifname: str) -> None:
        try:
            os.unlink(self._deleting_path(host_ifname))
        except FileNotFoundError:
            pass

    def load_deleting(self) -> list[dict[str, Any]]:
        return _load_dir(self.deleting_dir)


def _load_dir(path: str) -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".json"):
            data = read_json(os.path.join(path, name))
            if isinstance(data, dict):
                out.append(data)
    return out


class ServiceStore:
    """The services' state: a snapshot, <stateDir>/services.json
    ({"nextBackendId", "services": [...]}, the format older builds wrote),
    and a journal after it, <stateDir>/services.journal, one JSON line per
    change ({"nextBackendId", "upsert": [...], "delete": [ids]}).

    A change appends its line with one fsync, so it costs what it changed.
    The journal is folded into a new snapshot when it holds more records
    than twice the live services (at least COMPACT_MIN), and a change that
    rewrites half the services or more writes the snapshot directly. The
    snapshot is replaced atomically before the journal goes. Snapshot and
    lines carry a sequence number, so lines a snapshot already holds (a
    crash between the two steps) are skipped on load. A torn last line (a
    crash mid-append) is ignored: its change was never acknowledged.
    """

    COMPACT_MIN = 1024

    def __init__(self, state_dir: str) -> None:
        self.snapshot = os.path.join(state_dir, "services.json")
        self.journal = os.path.join(state_dir, "services.journal")
        self._journal_records = 0
        self._seq = 0

    def save(
        self,
        changed: list[dict[str, Any]],
        removed: Iterable[int],
        next_backend_id: int,
        live: int,
        everything: Callable[[], list[dict[str, Any]]],
    ) -> None:
        """Record a change: the services `changed` (their whole records) and
        `removed`, of `live` services now; `everything` lists them all, for
        a snapshot."""
        removed = list(removed)
        n = len(changed) + len(removed)
        if n * 2 >= live or self._journal_records + n > max(self.COMPACT_MIN, 2 * live):
            self._write_snapshot(everything(), next_backend_id)
            return
        self._seq += 1
        line = json.dumps(
            {
                "seq": self._seq,
                "nextBackendId": next_backend_id,
                "upsert": changed,
                "delete": removed,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        with open(self.journal, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._journal_records += n

    def _write_snapshot(self, records: list[dict[str, Any]], next_backend_id: int) -> None:
        self._seq += 1
        write_json_atomic(
            self.snapshot,
            {"seq": self._seq, "nextBackendId": next_backend_id, "services": records},
        )
        try:
            os.unlink(self.journal)
        except FileNotFoundError:
            pass
        self._journal_records = 0

    def load(self) -> tuple[int, list[dict[str, Any]]]:
        """(next backend id, saved services): the snapshot, then the journal."""
        data = read_json(self.snapshot, default={}) or {}
        nxt = int(data.get("nextBackendId", 1))
        records = {int(r["id"]): r for r in data.get("services", [])}
        self._seq = int(data.get("seq", 0))
        self._journal_records = 0
        try:
            with open(self.journal) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                change = json.loads(line)
            except ValueError:
                break  # torn by a crash mid-append: nothing after it was acknowledged
            if int(change.get("seq", 0)) <= self._seq:
                continue  # the snapshot holds it already
            self._seq = int(change["seq"])
            nxt = int(change.get("nextBackendId", nxt))
            for r in change.get("upsert", []):
                records[int(r["id"])] = r
            for sid in change.get("delete", []):
                records.pop(int(sid), None)
            self._journal_records += len(change.get("upsert", [])) + len(change.get("delete", []))
        return nxt, [records[k] for k in sorted(records)]
