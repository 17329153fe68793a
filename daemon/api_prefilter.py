"""The agent API's prefilter routes (daemon/api.py mounts them).

GET  /v1/prefilter           the deny list: CIDR, source, packets and bytes dropped
PUT  /v1/prefilter           {"cidrs": [...]}: add (all or nothing)
POST /v1/prefilter/delete    {"cidrs": [...]}: delete (all must be listed)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from porin.errors import PorinError

Handler = Callable[[dict[str, Any], Any, re.Match[str]], tuple[int, Any]]


def routes(prefilter: Any) -> list[tuple[str, re.Pattern[str], Handler]]:
    """`prefilter`: the Prefilter, or None when this node runs no XDP."""

    def need() -> Any:
        if prefilter is None:
            raise PorinError(
                "this node runs no XDP (no devices, or xdpMode: disabled): nothing to prefilter",
                http_status=409,
            )
        return prefilter

    def cidrs(body: Any) -> Any:
        return body.get("cidrs") if isinstance(body, dict) else None

    def list_(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, need().list()

    def add(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"added": need().add(cidrs(body))}

    def delete(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"deleted": need().delete(cidrs(body))}

    return [
        ("GET", re.compile(r"^/v1/prefilter$"), list_),
        ("PUT", re.compile(r"^/v1/prefilter$"), add),
        ("POST", re.compile(r"^/v1/prefilter/delete$"), delete),
    ]
