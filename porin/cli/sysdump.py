"""porin sysdump: everything a bug report needs from this node, in one archive.

The agent's view (config with secrets redacted, verbose status, endpoints,
services, policies, nodes, identities, recent flows, Prometheus metrics,
its newest log lines), the pinned maps read directly (so a bundle is made
even while the agent is down), and the versions of the kernel, bcc and
Python. Each part is written as it is read; one that cannot be read is
listed in `errors.txt` and the rest goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tarfile
import time
from collections.abc import Callable
from typing import Any

import click

from porin import __version__
from porin.cli.context import Context
from porin.client import AgentUnavailable, ApiError

# (file, CLI arguments): the CLI's own listings, in JSON
CLI_PARTS = [
    ("maps/endpoints.json", ["bpf", "endpoint", "list"]),
    ("maps/lb.json", ["bpf", "lb", "list"]),
    ("maps/ct4_global.json", ["bpf", "ct", "list", "global"]),
    ("maps/nat4.json", ["bpf", "nat", "list"]),
    ("maps/ipcache.json", ["bpf", "ipcache", "list"]),
    ("maps/tunnel.json", ["bpf", "tunnel", "list"]),
    ("maps/frag4.json", ["bpf", "frag", "list"]),
    ("metrics/datapath.json", ["metrics", "list"]),
    ("metrics/agent.json", ["metrics", "agent"]),
    ("metrics/xdp.json", ["metrics", "xdp"]),
]
# (file, API path): the agent's view
API_PARTS = [
    ("config.json", "/v1/config"),
    ("status.json", "/v1/status?verbose=1"),
    ("endpoints.json", "/v1/endpoints"),
    ("services.json", "/v1/services"),
    ("policies.json", "/v1/policies"),
    ("nodes.json", "/v1/nodes"),
    ("identities.json", "/v1/identities"),
    ("prefilter.json", "/v1/prefilter"),
    ("flows.json", "/v1/flows?last=2000&peek=1"),
]


def versions() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as e:
            return f"unreadable: {e.strerror}"

    try:
        import bcc

        bcc_version = getattr(bcc, "__version__", "unknown")
    except ImportError as e:
        bcc_version = f"not importable: {e}"
    u = platform.uname()
    return {
        "porin": __version__,
        "kernel": {"release": u.release, "version": u.version, "machine": u.machine},
        "procVersion": read("/proc/version"),
        "os": read("/etc/os-release"),
        "python": platform.python_version(),
        "bcc": bcc_version,
    }


def _run_cli(ctx: Context, args: list[str]) -> str:
    """One of this CLI's commands with -o json, its output captured."""
    from porin.cli.main import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            cli.main(
                ["--socket", ctx.socket, "--bpffs-root", ctx.bpffs_root, *args, "-o", "json"],
                prog_name="porin",
                standalone_mode=False,
            )
        except SystemExit as e:
            if e.code:
                raise RuntimeError(err.getvalue().strip() or f"exit {e.code}") from None
    return out.getvalue()


@click.command()
@click.option(
    "-o",
    "--output",
    "path",
    default=None,
    help="Archive to write [porin-sysdump-<node>-<time>.tar.gz].",
)
@click.option("--log-lines", default=2000, show_default=True, help="Agent log lines to include.")
@click.pass_obj
def sysdump(ctx: Context, path: str | None, log_lines: int) -> None:
    """Collect config, status, state, map dumps, metrics, flows and the agent's log."""
    parts: dict[str, bytes] = {}
    errors: list[str] = []

    def part(name: str, fn: Callable[[], Any]) -> None:
        try:
            data = fn()
        except (AgentUnavailable, ApiError, RuntimeError, OSError, ValueError) as e:
            errors.append(f"{name}: {getattr(e, 'message', None) or e}")
            return
        if isinstance(data, str):
            parts[name] = data.encode()
        else:
            parts[name] = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    client = ctx.client()
    part("versions.json", versions)
    for name, api_path in API_PARTS:
        part(name, lambda p=api_path: client.request("GET", p))
    part("metrics/prometheus.txt", lambda: client.request("GET", "/v1/metrics/prometheus")["text"])
    part(
        "agent.log",
        lambda: (
            "\n".join(client.request("GET", f"/v1/debug/log?lines={log_lines}")["lines"]) + "\n"
        ),
    )
    for name, args in CLI_PARTS:
        part(name, lambda a=args: _run_cli(ctx, a))
    if errors:
        parts["errors.txt"] = ("\n".join(errors) + "\n").encode()
    node = "node"
    if "status.json" in parts:
        node = json.loads(parts["status.json"]).get("node", node)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = path or f"porin-sysdump-{node}-{stamp}.tar.gz"
    top = os.path.basename(path).removesuffix(".tar.gz").removesuffix(".tgz")
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(parts.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    os.chmod(path, 0o600)
    click.echo(
        f"{path}: {len(parts)} files" + (f", {len(errors)} parts unreadable" if errors else "")
    )
    for e in errors:
        click.echo(f"  {e}", err=True)
