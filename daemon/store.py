"""Crash-safe JSON state under the agent's state dir."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json_atomic(path: str, data: Any) -> None:
    """Write `data` to `path` so a crash leaves the old or the new file, never half."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        # compact: the C encoder (an indent forces the slow pure-Python one,
        # which matters for a services.json of 10,000 services)
        f.write(json.dumps(data, sort_keys=True, separators=(",", ":")))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
