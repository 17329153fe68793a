"""The agent's JSON API over a unix socket (HTTP/1.0, one request per connection).

    GET    /v1/healthz                       readiness (CNI STATUS)
    GET    /v1/status[?verbose=1]            node, datapath and endpoint summary (verbose:
                                             programs per device, map fill, controllers)
    GET    /v1/endpoints?containerID=&ifname=   the endpoint of one attachment (a list)
    GET    /v1/endpoints                     list endpoints
    GET    /v1/endpoints/{id}                one endpoint
    PUT    /v1/endpoints                     create (CNI ADD), body: EndpointRequest
    DELETE /v1/endpoints?containerID=&ifname= delete (CNI DEL), idempotent
    DELETE /v1/endpoints/{id}                delete by id
    POST   /v1/endpoints/check               CNI CHECK, body: {containerID, ifname, netns}
    POST   /v1/gc                            CNI GC, body: {network, validAttachments}
    GET    /v1/services                      list services
    GET    /v1/services/{id}                 one service
    PUT    /v1/services                      create or update (id optional), body: Service
    PUT    /v1/services/{id}                 create or update service {id}
    POST   /v1/services/batch                create or update many, body: [Service]
                                             or {"upsert": [Service], "delete": [id]}
    DELETE /v1/services/{id}                 delete
    DELETE /v1/services                      delete every service
    GET    /v1/flows?FILTERS[&follow=1]      the flow log (daemon/api_flows.py)
    GET    /v1/config, /v1/debug/log, /v1/metrics/prometheus   for `porin sysdump`
                                             (daemon/api_debug.py)
    GET    /v1/ct/gc                         conntrack GC statistics
    POST   /v1/ct/gc                         run a conntrack GC pass now
    POST   /v1/ct/flush                      delete every conntrack entry

Errors are JSON {"error": message, "cniCode": code}; a request that fails
validation gets a 4xx and changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from porin import errors
from porin.daemon.api_flows import Stream
from porin.daemon.api_flows import routes as flow_routes
from porin.daemon.endpoints import EndpointManager
from porin.daemon.services import ServiceManager
from porin.errors import PorinError
from porin.models import (
    EndpointRequest,
    Service,
    ServiceType,
    ValidationError,
    validate_container_id,
    validate_ifname,
)

log = logging.getLogger("porin.api")

MAX_BODY = 32 << 20  # a batch of 100,000 services fits
# a client has this long for each read or write of its request and reply: a
# slow or stalled client loses its connection, it does not keep a thread
CLIENT_TIMEOUT = 10.0
MAX_CONNECTIONS = 512  # beyond this many at once: 503 at once, not a thread each
# Handlers run on a fixed pool, not on the connection's own thread: pyroute2
# gives every thread that touches an IPRoute a netlink socket of its own,
# released only when the IPRoute closes, so a thread per request leaked one
# socket per CNI ADD. The connection threads only read requests and write
# replies (a slow client holds one of those, never a handler).
API_WORKERS = 16

Handler = Callable[[dict[str, Any], Any, re.Match[str]], tuple[int, Any]]


class Api:
    """Routes and handlers; independent of the transport for easy testing."""

    def __init__(
        self,
        manager: EndpointManager,
        services: ServiceManager,
        ct: Any,
        status: Callable[[], dict[str, Any]],
        cluster: Any = None,
        policy: Any = None,
        prefilter: Any = None,
        flows: Any = None,
    ) -> None:
        self.manager = manager
        self.services = services
        self.ct = ct  # CtGarbageCollector
        self.status = status
        self.cluster = cluster  # ClusterState
        # (route template, method, HTTP status, seconds) of every request: daemon/metrics.py
        self.observe: Callable[[str, str, int, float], None] | None = None
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"^/v1/healthz$"), self._healthz),
            ("GET", re.compile(r"^/v1/status$"), self._status),
            ("GET", re.compile(r"^/v1/endpoints$"), self._list),
            ("GET", re.compile(r"^/v1/endpoints/(\d+)$"), self._get),
            ("PUT", re.compile(r"^/v1/endpoints$"), self._add),
            ("DELETE", re.compile(r"^/v1/endpoints$"), self._delete),
            ("DELETE", re.compile(r"^/v1/endpoints/(\d+)$"), self._delete_id),
            ("POST", re.compile(r"^/v1/endpoints/check$"), self._check),
            ("POST", re.compile(r"^/v1/gc$"), self._gc),
            ("GET", re.compile(r"^/v1/services$"), self._svc_list),
            ("GET", re.compile(r"^/v1/services/(\d+)$"), self._svc_get),
            ("PUT", re.compile(r"^/v1/services$"), self._svc_put),
            ("PUT", re.compile(r"^/v1/services/(\d+)$"), self._svc_put),
            ("POST", re.compile(r"^/v1/services/batch$"), self._svc_batch),
            ("DELETE", re.compile(r"^/v1/services/(\d+)$"), self._svc_delete),
            ("DELETE", re.compile(r"^/v1/services$"), self._svc_delete_all),
            ("GET", re.compile(r"^/v1/ct/gc$"), self._ct_gc_stats),
            ("POST", re.compile(r"^/v1/ct/gc$"), self._ct_gc_run),
            ("POST", re.compile(r"^/v1/ct/flush$"), self._ct_flush),
            ("GET", re.compile(r"^/v1/nodes$"), self._nodes),
            ("GET", re.compile(r"^/v1/identities$"), self._identities),
        ]
        if policy is not None:  # PolicyManager
            from porin.daemon.api_policy import routes

            self.routes += routes(policy, manager, manager.cfg.bpffs_root)
        from porin.daemon.api_prefilter import routes as prefilter_routes

        self.routes += prefilter_routes(prefilter)
        self.routes += flow_routes(flows)

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        started = time.monotonic()
        route, (status, payload) = self._route(method, target, body)
        outbox = getattr(self.cluster, "outbox", None)
        if method != "GET" and status < 300 and isinstance(payload, dict) and outbox is not None:
            waiting = len(outbox.pending())
            if waiting:  # done here; the other nodes learn it when etcd is back
                # a copy: the payload may be the very object kept for the kvstore
                payload = {**payload, "kvstore": f"pending: {waiting} change(s) wait for it"}
        if self.observe is not None:
            self.observe(route, method, status, time.monotonic() - started)
        return status, payload

    def refused(self, method: str, target: str, status: int, started: float) -> None:
        """Count a request the transport refused before routing (bad body, too big)."""
        if self.observe is None:
            return
        path = urlsplit(target).path
        route = next((route_template(p) for _, p, _ in self.routes if p.match(path)), "unknown")
        self.observe(route, method, status, time.monotonic() - started)

    def _route(self, method: str, target: str, body: Any) -> tuple[str, tuple[int, Any]]:
        """(the route's template, e.g. /v1/endpoints/{id}, or "unknown"; the reply)."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        allowed = []
        route = "unknown"  # not the path itself: metrics labels stay few
        for m, pattern, fn in self.routes:
            match = pattern.match(url.path)
            if match:
                route = route_template(pattern)
                if m == method:
                    return route, self._call(fn, query, body, match)
                allowed.append(m)
        if allowed:
            why = f"{method} not allowed on {url.path} (use {', '.join(allowed)})"
            return route, (405, {"error": why})
        return route, (404, {"error": f"no such API path {url.path}"})

    def _call(
        self, fn: Handler, query: dict[str, Any], body: Any, m: re.Match[str]
    ) -> tuple[int, Any]:
        try:
            return fn(query, body, m)
        except PorinError as e:  # each error carries its own status and CNI code
            return e.http_status, {"error": str(e), "cniCode": e.cni_code}
        except Exception as e:
            log.exception("request failed")
            return 500, {"error": f"internal error: {e}", "cniCode": errors.PORIN_INTERNAL}

    # ----- handlers -----

    def _healthz(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"status": "ok"}

    def _status(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        if q.get("verbose", "") in ("1", "true", "yes"):
            return 200, self.status(verbose=True)
        return 200, self.status()

    def _list(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        eps = self.manager.list()
        if "containerID" in q:  # one attachment: ?containerID=&ifname=
            ep = self.manager.find(validate_container_id(q["containerID"]), q.get("ifname", "eth0"))
            eps = [ep] if ep is not None else []
        return 200, [ep.to_json() for ep in eps]

    def _get(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.manager.get(int(m.group(1))).to_json()

    def _add(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        req = EndpointRequest.from_json(body)
        return 200, self.manager.add(req).to_json()

    def _delete(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        cid = validate_container_id(q.get("containerID", ""))
        ifname = validate_ifname(q.get("ifname", ""))
        ep = self.manager.delete(cid, ifname)
        return 200, {"deleted": ep.to_json() if ep else None}

    def _delete_id(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        ep = self.manager.get(int(m.group(1)))
        self.manager.delete(ep.container_id, ep.ifname)
        return 200, {"deleted": ep.to_json()}

    def _check(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        cid = validate_container_id(str(body.get("containerID", "")))
        ifname = validate_ifname(str(body.get("ifname", "")))
        problems = self.manager.check(cid, ifname, str(body.get("netns") or ""))
        return 200, {"problems": problems}

    def _gc(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        network = body.get("network")
        if not isinstance(network, str) or not network:
            raise ValidationError("network", "is required")
        valid_raw = body.get("validAttachments")
        if not isinstance(valid_raw, list):
            raise ValidationError("validAttachments", "must be a list")
        valid = set()
        for i, a in enumerate(valid_raw):
            if (
                not isinstance(a, dict)
                or not isinstance(a.get("containerID"), str)
                or not isinstance(a.get("ifname"), str)
            ):
                raise ValidationError(f"validAttachments[{i}]", "needs containerID and ifname")
            valid.add((a["containerID"], a["ifname"]))
        removed = self.manager.gc(network, valid)
        return 200, {"removed": [ep.to_json() for ep in removed]}

    # ----- services -----

    def _svc_list(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, [s.to_json() for s in self.services.list()]

    def _svc_get(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        sid = int(m.group(1))
        return 200, {
            **self.services.get(sid).to_json(),
            "backendIds": self.services.backend_ids(sid),
        }

    def _svc_put(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        path_id = int(m.group(1)) if m.groups() else 0
        if path_id and body.get("id", path_id) != path_id:
            raise ValidationError("id", f"body id {body.get('id')} differs from path id {path_id}")
        if path_id and not 1 <= path_id <= 32767:
            raise ValidationError("id", "must be 1-32767")
        svc = Service.from_json({**body, "source": "api"}, default_id=path_id)
        _refuse_host_port_type(svc)
        done = self.services.upsert(svc).to_json()
        if self.cluster is not None:
            self.cluster.service_changed(done)
        return 200, done

    def _svc_batch(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        # a list of services to program, or {"upsert": [...], "delete": [ids]}
        if isinstance(body, dict):
            unknown = set(body) - {"upsert", "delete"}
            if unknown:
                raise ValidationError(sorted(unknown)[0], "unknown field (upsert, delete)")
            items, delete = body.get("upsert", []), body.get("delete", [])
        else:
            items, delete = body, []
        if not isinstance(items, list):
            raise ValidationError("upsert", "must be a JSON list of services")
        if not isinstance(delete, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in delete
        ):
            raise ValidationError("delete", "must be a JSON list of service ids")
        svcs = []
        for i, item in enumerate(items):
            try:
                svcs.append(
                    Service.from_json({**item, "source": "api"} if isinstance(item, dict) else item)
                )
            except ValidationError as e:
                raise ValidationError(f"[{i}].{e.field}", str(e).split(": ", 1)[-1]) from None
            _refuse_host_port_type(svcs[-1])
        for sid in delete:
            self.services.get(sid)  # all known, or nothing changes
            self.services.check_not_host_port(sid)
        done = self.services.upsert_many(svcs) if svcs else []
        gone = self.services.delete_many(delete) if delete else []
        if self.cluster is not None:
            for svc in done:
                self.cluster.service_changed(svc.to_json())
            for svc in gone:
                self.cluster.service_deleted(svc.id)
        return 200, {"programmed": len(done), "ids": [s.id for s in done], "deleted": len(gone)}

    def _svc_delete(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        self.services.check_not_host_port(int(m.group(1)))
        gone = self.services.delete(int(m.group(1)))
        if self.cluster is not None:
            self.cluster.service_deleted(gone.id)
        return 200, {"deleted": gone.to_json()}

    def _svc_delete_all(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        gone = self.services.delete_many(
            [s.id for s in self.services.list() if s.type != ServiceType.HOST_PORT]
        )
        if self.cluster is not None:
            for svc in gone:
                self.cluster.service_deleted(svc.id)
        return 200, {"deleted": len(gone)}

    # ----- conntrack -----

    def _ct_gc_stats(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.ct.stats.to_json()

    def _ct_gc_run(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        deleted = self.ct.run_once()
        return 200, {"deleted": deleted, **self.ct.stats.to_json()}

    def _ct_flush(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"deleted": self.ct.ct.flush()}

    # ----- cluster -----

    def _nodes(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.cluster.node_list() if self.cluster else []

    def _identities(self, q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.cluster.identities.list_with_usage() if self.cluster else []


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.0"
    timeout = CLIENT_TIMEOUT

    def _serve(self, method: str) -> None:
        started = time.monotonic()
        status, payload = self._read_body()
        if status:
            self.server.api.refused(method, self.path, status, started)
        else:
            body, target = payload, self.path
            status, payload = self.server.workers.submit(
                self.server.api.handle, method, target, body
            ).result()
        self._reply(status, payload)

    def _read_body(self) -> tuple[int, Any]:
        """(0, the JSON body or None), or (a 4xx status, its error)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return 400, {"error": "bad Content-Length"}
        if length < 0:
            return 400, {"error": f"bad Content-Length {length}"}
        if length > MAX_BODY:
            return 413, {"error": f"request body over {MAX_BODY} bytes"}
        if not length:
            return 0, None
        raw = self.rfile.read(length)
        if len(raw) < length:
            return 400, {"error": f"request body cut short: {len(raw)} of {length} bytes"}
        try:
            return 0, json.loads(raw)
        except (ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            return 400, {
                "error": f"request body is not JSON: {why}",
                "cniCode": errors.DECODE_FAILURE,
            }

    def _reply(self, status: int, payload: Any) -> None:
        if isinstance(payload, Stream):
            return payload.send(self)
        data = json.dumps(payload).encode()
        self.send_response(
            status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        )
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server refuses before a route is chosen (a request line
        it cannot parse, headers too long, a method with no handler), as
        JSON like every other error; an unknown method is a 405, not 501."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = (
                405,
                f"method {self.command!r} not allowed (GET, PUT, POST, DELETE, PATCH)",
            )
        if code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            code = 400  # the client's to fix: the agent speaks HTTP/1.0 and 1.1
        self.close_connection = True
        self.request_version = self.protocol_version  # a status line even to a bad request
        try:
            self._reply(code, {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass  # the client went away

    def parse_request(self) -> bool:
        """http.server's parsing, refusing also what it lets through silently:
        an empty request line (it closes without a word) and HTTP/0.9."""
        if not self.raw_requestline.strip():
            self.command, self.requestline = "", ""
            self.send_error(400, "empty request line (want: METHOD /v1/... HTTP/1.0)")
            return False
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 is not supported: send HTTP/1.0 or HTTP/1.1")
            return False
        return True

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("api: " + format, *args)


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # the listen backlog: runtimes start many pods at once (socketserver's default is 5)
    request_queue_size = 256

    def __init__(self, path: str, api: Api) -> None:
        self.api = api
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.workers = ThreadPoolExecutor(API_WORKERS, thread_name_prefix="api")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            super().__init__(path, _RequestHandler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def server_close(self) -> None:
        super().server_close()
        self.workers.shutdown(wait=False, cancel_futures=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _refuse_busy(sock: Any) -> None:
    data = json.dumps({"error": f"the agent is serving {MAX_CONNECTIONS} requests; retry"})
    reply = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n{data}"
    ).encode()
    try:
        sock.settimeout(1.0)
        sock.sendall(reply)
    except OSError:
        pass


def route_template(pattern: re.Pattern[str]) -> str:
    """A route's path with its parameters named: ^/v1/services/(\\d+)$ -> /v1/services/{id}."""
    path = pattern.pattern.strip("^$").replace(r"(\d+)", "{id}")
    return re.sub(r"\([^)]*\)", "{name}", path)


def _refuse_host_port_type(svc: Service) -> None:
    if svc.type == ServiceType.HOST_PORT:
        raise ValidationError(
            "type", "hostport services come from a pod's CNI portMappings, not from the API"
        )
