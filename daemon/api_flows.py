"""The agent API's flow routes (daemon/api.py mounts them; daemon/peer_api.py
serves the same read-only view to other nodes).

GET /v1/flows?FILTERS      the kept flows that match (daemon/flow_filter.py), with
                           the capture state and how many flows were missed
GET /v1/flows?follow=1     a stream: one JSON object per line, as flows come
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from porin.daemon.flow_filter import FlowFilter
from porin.errors import PorinError

Handler = Callable[[dict[str, Any], Any, re.Match[str]], tuple[int, Any]]


class Stream:
    """A reply sent as it is made: one JSON object per line, until the
    generator ends or the client goes (daemon/api.py writes it)."""

    def __init__(self, items: Iterator[dict[str, Any]]) -> None:
        self.items = items

    def send(self, handler: BaseHTTPRequestHandler) -> None:
        """Lines as they come; the end of the reply is the end of the connection."""
        handler.send_response(200, "OK")
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.end_headers()
        try:
            for item in self.items:
                handler.wfile.write(json.dumps(item).encode() + b"\n")
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                close()  # the generator's cleanup (a follower fewer)


def routes(flows: Any) -> list[tuple[str, re.Pattern[str], Handler]]:
    """`flows`: the FlowLog, or None when capture is off."""

    def get(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        if flows is None:
            raise PorinError("the flow log is off on this node (flowCapture: off)", http_status=409)
        f = FlowFilter.from_query(q)
        if f.follow:
            return 200, Stream(flows.follow(f))
        return 200, flows.query(f)

    return [("GET", re.compile(r"^/v1/flows$"), get)]
