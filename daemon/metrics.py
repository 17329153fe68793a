"""The agent's Prometheus endpoint: `/metrics` on `prometheusListen`.

One registry per agent (not prometheus_client's global one, so several
agents in one test process stay apart). Two kinds of metric live in it:

- instruments the agent updates as things happen (`AgentMetrics`): API
  requests by route, CNI commands, kvstore operations, conntrack GC passes;
- collectors read at scrape time (daemon/metrics_collect.py): the
  datapath's per-CPU counters, map fill, endpoints, services, nodes.

Names follow Prometheus conventions (and Cilium's where one exists):
`porin_` prefix, `_total` for counters, seconds and bytes as units. The
server only answers GET /metrics; it changes nothing.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import MetricsHandler
from prometheus_client.gc_collector import GCCollector

log = logging.getLogger("porin.metrics")

# CNI commands as they reach the API (cni/plugin.py)
CNI_ROUTES = {
    ("PUT", "/v1/endpoints"): "ADD",
    ("DELETE", "/v1/endpoints"): "DEL",
    ("POST", "/v1/endpoints/check"): "CHECK",
    ("POST", "/v1/gc"): "GC",
    ("GET", "/v1/healthz"): "STATUS",
}

# an agent request is a few ms; a CNI ADD creates a veth and may wait on a lock
_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_GC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class AgentMetrics:
    """The registry and the instruments the agent's components update."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: Cilium's and most exporters' choice
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.api_requests = Counter(
            "porin_api_requests_total",
            "Agent API requests by route, method and HTTP status",
            ["route", "method", "code"],
            registry=r,
        )
        self.api_duration = Histogram(
            "porin_api_request_duration_seconds",
            "Agent API request handling time by route and method",
            ["route", "method"],
            buckets=_API_BUCKETS,
            registry=r,
        )
        self.cni_duration = Histogram(
            "porin_cni_request_duration_seconds",
            "CNI commands as the agent handles them (ADD, DEL, CHECK, GC, STATUS), by outcome",
            ["command", "outcome"],
            buckets=_API_BUCKETS,
            registry=r,
        )
        self.kvstore_ops = Counter(
            "porin_kvstore_operations_total",
            "kvstore operations by kind and outcome",
            ["operation", "outcome"],
            registry=r,
        )
        self.kvstore_duration = Histogram(
            "porin_kvstore_operation_duration_seconds",
            "kvstore operation latency by kind",
            ["operation"],
            buckets=_API_BUCKETS,
            registry=r,
        )
        self.kvstore_events = Counter(
            "porin_kvstore_events_received_total",
            "Watch events received from the kvstore, by prefix",
            ["scope"],
            registry=r,
        )
        self.ct_gc_duration = Histogram(
            "porin_conntrack_gc_duration_seconds",
            "Duration of one conntrack garbage collection pass (NAT included)",
            buckets=_GC_BUCKETS,
            registry=r,
        )

    # --- hooks the components call ---

    def api_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.api_requests.labels(route, method, str(code)).inc()
        self.api_duration.labels(route, method).observe(seconds)
        command = CNI_ROUTES.get((method, route))
        if command is not None:
            outcome = "success" if code < 400 else "failure"
            self.cni_duration.labels(command, outcome).observe(seconds)

    def kvstore_op(self, operation: str, ok: bool, seconds: float) -> None:
        self.kvstore_ops.labels(operation, "success" if ok else "error").inc()
        self.kvstore_duration.labels(operation).observe(seconds)

    def kvstore_event(self, scope: str) -> None:
        self.kvstore_events.labels(scope).inc()

    def ct_gc_pass(self, seconds: float) -> None:
        self.ct_gc_duration.observe(seconds)


class _Handler(MetricsHandler):
    def do_GET(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/metrics":
            body = b"porin-agent serves Prometheus metrics on /metrics only\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("metrics: " + format, *args)


class MetricsServer:
    """Binds at construction (a taken port fails the agent's start at once);
    serves from `start` on, in its own thread."""

    def __init__(self, host: str, port: int, metrics: AgentMetrics) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = type("Handler", (_Handler,), {"registry": metrics.registry})

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        bind = host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        try:
            self.httpd = Server((bind, port), handler)
        except OSError as e:
            raise OSError(
                e.errno, f"prometheusListen {host or '*'}:{port}: cannot listen: {e.strerror}"
            ) from None
        self.address = f"{host or '*'}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("Prometheus metrics on http://%s/metrics", self.address)

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
