"""daemon/metrics.py and the API's request metrics, without a datapath."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from porin.daemon.api import Api, ApiServer
from porin.daemon.config import ConfigError, from_mapping, parse_listen
from porin.daemon.metrics import AgentMetrics, MetricsServer
from porin.daemon.metrics_collect import _by_label


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    text = generate_latest(metrics.registry).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize(
    "text, want",
    [
        ("127.0.0.1:9962", ("127.0.0.1", 9962)),
        (":9962", ("", 9962)),
        ("[::1]:9090", ("::1", 9090)),
        ("", None),
        ("  ", None),
    ],
)
def test_listen_addresses(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    "value, says",
    [
        ("9962", "HOST:PORT"),
        ("localhost:9962", "not an IP address"),
        ("127.0.0.1:0", "HOST:PORT"),
        ("127.0.0.1:70000", "HOST:PORT"),
        ("1.2.3.4:", "HOST:PORT"),
        (9962, "must be a string"),
    ],
)
def test_bad_listen_address_names_the_field(value, says):
    with pytest.raises(ConfigError) as e:
        from_mapping({"prometheusListen": value})
    assert str(e.value).startswith("prometheusListen:") and says in str(e.value)


def test_empty_listen_disables():
    assert from_mapping({"prometheusListen": ""}).prometheus_listen == ""
    assert from_mapping({"prometheusListen": None}).prometheus_listen == ""


def test_cni_commands_are_timed_by_outcome():
    m = AgentMetrics()
    m.api_request("/v1/endpoints", "PUT", 200, 0.02)
    m.api_request("/v1/endpoints", "PUT", 409, 0.001)
    m.api_request("/v1/endpoints", "DELETE", 200, 0.01)
    m.api_request("/v1/services", "PUT", 200, 0.003)  # not a CNI command
    s = samples(m)
    add_ok = (("command", "ADD"), ("outcome", "success"))
    add_failed = (("command", "ADD"), ("outcome", "failure"))
    assert s[("porin_cni_request_duration_seconds_count", add_ok)] == 1
    assert s[("porin_cni_request_duration_seconds_sum", add_ok)] == pytest.approx(0.02)
    assert s[("porin_cni_request_duration_seconds_count", add_failed)] == 1
    assert (
        s[
            (
                "porin_cni_request_duration_seconds_count",
                (("command", "DEL"), ("outcome", "success")),
            )
        ]
        == 1
    )
    svc = (("code", "200"), ("method", "PUT"), ("route", "/v1/services"))
    assert s[("porin_api_requests_total", svc)] == 1
    assert not [
        k
        for k in s
        if k[0] == "porin_cni_request_duration_seconds_count"
        and dict(k[1])["command"] not in ("ADD", "DEL")
    ]


def test_no_created_series():
    m = AgentMetrics()
    m.api_request("/v1/status", "GET", 200, 0.001)
    assert "_created" not in generate_latest(m.registry).decode()


def api_with_observer():
    seen = []
    api = Api(None, None, None, lambda: {"node": "n1"})
    api.observe = lambda route, method, code, secs: seen.append((route, method, code))
    return api, seen


def test_api_requests_are_labelled_by_route_template_not_path():
    api, seen = api_with_observer()
    assert api.handle("GET", "/v1/status", None)[0] == 200
    assert api.handle("PUT", "/v1/status", None)[0] == 405
    assert api.handle("GET", "/v1/no/such/thing/12345", None)[0] == 404
    # the handler fails (no endpoint manager here): a 500, counted all the same
    assert api.handle("GET", "/v1/endpoints/42", None)[0] == 500
    assert seen == [
        ("/v1/status", "GET", 200),
        ("/v1/status", "PUT", 405),
        ("unknown", "GET", 404),
        ("/v1/endpoints/{id}", "GET", 500),
    ]


def test_requests_refused_before_routing_are_counted(tmp_path):
    api, seen = api_with_observer()
    path = str(tmp_path / "api.sock")
    server = ApiServer(path, api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            body = b"{not json"
            s.sendall(
                b"PUT /v1/endpoints HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            reply = s.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.0 400")
        assert seen == [("/v1/endpoints", "PUT", 400)]
    finally:
        server.shutdown()
        server.server_close()


def test_gauges_by_label_keep_the_usual_values_at_zero():
    from collections import Counter

    fam = _by_label(
        "porin_x", "doc", "state", Counter({"ready": 2, "odd": 1}), ("creating", "ready")
    )
    assert [(s.labels["state"], s.value) for s in fam.samples] == [
        ("creating", 0),
        ("ready", 2),
        ("odd", 1),
    ]


def test_server_answers_metrics_only():
    m = AgentMetrics()
    m.api_request("/v1/status", "GET", 200, 0.001)
    server = MetricsServer("127.0.0.1", 0, m)
    server.start()
    try:
        port = server.httpd.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert "porin_api_requests_total" in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=5)
        assert e.value.code == 404
    finally:
        server.stop()


def test_taken_port_is_an_error_naming_the_setting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError) as e:
            MetricsServer("127.0.0.1", port, AgentMetrics())
        assert f"prometheusListen 127.0.0.1:{port}" in str(e.value)
        assert "in use" in str(e.value)


def test_sysdump_config_leaves_secrets_out():
    from porin.daemon.api_debug import REDACTED, config_json

    cfg = from_mapping({"kvstore": {"endpoints": ["https://porin:hunter2@10.0.0.5:2379"]}})
    # settings a later agent may take (the config check refuses them today)
    cfg.kvstore.update(password="hunter2", tlsKeyFile="/etc/porin/key.pem")
    out = config_json(cfg)
    assert out["kvstore"]["password"] == REDACTED
    assert out["kvstore"]["tlsKeyFile"] == REDACTED
    assert out["kvstore"]["endpoints"] == [f"https://{REDACTED}@10.0.0.5:2379"]
    assert "hunter2" not in str(out)
    assert out["podCIDR"] == cfg.pod_cidr  # everything else, under its YAML name
