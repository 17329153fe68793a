"""The read-only API a node offers the other nodes, on its node IP and `healthPort`.

    GET /healthz          {"status": "ok", "node": NAME}
    GET /v1/flows?...     this node's flow log, as on the unix socket (daemon/api_flows.py),
                          with "Authorization: Bearer <the cluster's peer token>"

It is what `porin observe --cluster` and the other nodes' health probes
(daemon/health.py) read. It is bound to the node's address on the node
network (never 0.0.0.0), answers GET only, and nothing it serves changes
the node; it carries what the flow log carries (addresses, pod names,
labels), so it asks for the cluster's peer token, which the first node
puts in the kvstore and `porin observe --cluster` gets from its own agent
(a root-only socket): a pod that reaches a node IP (its own node, or any
node through masquerade) cannot read flows, unless it can read the
kvstore too. Keep the node network private as you would the kvstore.

A second listener on the node's pod gateway (its address in the overlay)
answers /healthz only: the overlay probe's target. Pods can reach that
address, so it serves no flows.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from porin.daemon.api_flows import Stream
from porin.daemon.api_flows import routes as flow_routes
from porin.errors import PorinError

log = logging.getLogger("porin.peer")


class _Handler(BaseHTTPRequestHandler):
    server: PeerServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path == "/healthz":
            return self._reply(200, {"status": "ok", "node": self.server.node})
        for _method, pattern, fn in self.server.routes:
            m = pattern.match(url.path)
            if m:
                if not self._authorized():
                    return self._reply(401, {"error": "the cluster's peer token is required"})
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    status, payload = fn(q, None, m)
                except PorinError as e:
                    return self._reply(e.http_status, {"error": str(e)})
                if isinstance(payload, Stream):
                    return payload.send(self)
                return self._reply(status, payload)
        self._reply(404, {"error": f"no such path {url.path} (read-only: /healthz, /v1/flows)"})

    def _authorized(self) -> bool:
        token = self.server.token()
        given = self.headers.get("Authorization", "")
        return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _refuse(self) -> None:
        self._reply(405, {"error": "this API is read-only: GET only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("peer: " + format, *args)


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET

    def __init__(
        self,
        node_ip: str,
        port: int,
        node: str,
        flows: Any,
        serve_flows: bool = True,
        token: Callable[[], str] = lambda: "",
    ) -> None:
        self.node = node
        self.token = token  # the cluster's peer token, "" while unknown
        self.routes = flow_routes(flows) if serve_flows else []
        try:
            super().__init__((node_ip, port), _Handler)
        except OSError as e:
            raise OSError(
                e.errno, f"healthPort {node_ip}:{port}: cannot listen: {e.strerror}"
            ) from None
        self.address = f"{node_ip}:{self.server_address[1]}"
        self.serve_flows = serve_flows
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="peer-api", daemon=True)
        self._thread.start()
        paths = "/healthz, /v1/flows" if self.serve_flows else "/healthz"
        log.info("read-only peer API on http://%s (%s)", self.address, paths)

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
        self.server_close()
