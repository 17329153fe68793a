"""What every CLI command shares: where the agent and the maps are, and how to fail."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from porin.client import AgentClient, AgentUnavailable, ApiError
from porin.maps.pinned import MapNotFound


@dataclass
class Context:
    socket: str
    bpffs_root: str

    def client(self, timeout: float = 30) -> AgentClient:
        return AgentClient(self.socket, timeout=timeout)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        try:
            out = self.client(timeout).request(method, path, body)
        except AgentUnavailable as e:
            fail(str(e))
        except ApiError as e:
            fail(f"agent: {e.message}")
        if isinstance(out, dict) and isinstance(out.get("kvstore"), str):
            # done on this node; the cluster learns it when the kvstore is back
            click.echo(f"note: kvstore {out['kvstore']}", err=True)
        return out


def fail(msg: str) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(1)


def open_map(ctx: Context, cls: type) -> Any:
    try:
        return cls(ctx.bpffs_root, read_only=True)
    except MapNotFound as e:
        fail(str(e))
    except PermissionError:
        fail(f"permission denied opening maps under {ctx.bpffs_root}; run as root")
