"""The agent API's routes for support bundles (`porin sysdump`); daemon/api.py mounts them.

GET /v1/config                  the configuration in effect, secrets redacted
GET /v1/debug/log?lines=N       the agent's newest log lines (daemon/log_ring.py)
GET /v1/metrics/prometheus      what /metrics would answer, as {"text": ...}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from porin.daemon.config import _KEYS, AgentConfig
from porin.daemon.log_ring import RING
from porin.models import ValidationError

Handler = Callable[[dict[str, Any], Any, re.Match[str]], tuple[int, Any]]
SECRET = re.compile(r"pass|secret|token|key|cert|credential", re.IGNORECASE)
REDACTED = "(redacted)"


def redact(value: Any) -> Any:
    """Values under secret-looking keys and credentials in URLs replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        u = urlsplit(value)
        if u.username or u.password:
            host = u.hostname or ""
            netloc = f"{REDACTED}@{host}" + (f":{u.port}" if u.port else "")
            return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    return value


def config_json(cfg: AgentConfig) -> dict[str, Any]:
    """The config under its YAML names, as the admin wrote them (plus defaults)."""
    by_attr = {attr: name for name, attr in _KEYS.items()}
    raw = asdict(cfg)
    out = {by_attr[k]: v for k, v in raw.items() if k in by_attr}
    out.update(raw.get("extra") or {})
    return redact(out)


def routes(cfg: AgentConfig, prometheus_text: Callable[[], str]) -> list[tuple[str, Any, Handler]]:
    def config(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, config_json(cfg)

    def log_tail(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        n = q.get("lines", "500")
        if not str(n).isdigit():
            raise ValidationError("lines", f"must be a number of lines, got {n!r}")
        return 200, {"lines": RING.tail(int(n))}

    def metrics(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"text": prometheus_text()}

    return [
        ("GET", re.compile(r"^/v1/config$"), config),
        ("GET", re.compile(r"^/v1/debug/log$"), log_tail),
        ("GET", re.compile(r"^/v1/metrics/prometheus$"), metrics),
    ]
