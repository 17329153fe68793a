"""daemon/kvstore.py:EtcdStore.watch_prefix against a stand-in for etcd's JSON
gateway: the watch asks for the prefix's range, events arrive decoded, and the
stream's connection is closed both when the watch is cancelled and when etcd
ends the stream (etcd stopped)."""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest
from porinlab import wait_for

from porin.daemon.kvstore import EtcdStore, Event, KvStoreError


def b64(x: str) -> str:
    return base64.b64encode(x.encode()).decode()


class Gateway:
    """Accepts one watch, sends `lines` as a chunked stream, then holds the
    connection (end=False) or ends its side of it (end=True)."""

    def __init__(self, lines: list[dict], end: bool) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.lines, self.end = lines, end
        self.request = b""
        self.body: dict = {}
        self.client_closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        while b"\r\n\r\n" not in self.request:
            self.request += conn.recv(4096)
        head, _, body = self.request.partition(b"\r\n\r\n")
        length = next(
            int(h.split(b":")[1])
            for h in head.split(b"\r\n")
            if h.lower().startswith(b"content-length")
        )
        while len(body) < length:
            body += conn.recv(4096)
        self.body = json.loads(body)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        for line in self.lines:
            data = json.dumps(line).encode() + b"\n"
            conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        if self.end:
            conn.shutdown(socket.SHUT_WR)  # etcd went away mid-stream
        conn.settimeout(20)
        try:
            while conn.recv(4096):
                pass
            self.client_closed.set()  # EOF: the client closed its socket
        except OSError:
            self.client_closed.set()


def _lines() -> list[dict]:
    return [
        {"result": {"header": {}, "created": True}},
        {
            "result": {
                "events": [
                    {"kv": {"key": b64("/porin/nodes/n2"), "value": b64('{"ip": "198.18.0.12"}')}},
                    {"type": "DELETE", "kv": {"key": b64("/porin/nodes/n3")}},
                ]
            }
        },
    ]


def test_events_arrive_decoded_and_cancel_closes_the_stream():
    gw = Gateway(_lines(), end=False)
    got: list[Event] = []
    cancel = EtcdStore([f"http://127.0.0.1:{gw.port}"]).watch_prefix("/porin/nodes/", got.append)
    wait_for(lambda: len(got) == 2, 10, "the two events")
    assert got == [
        Event("put", "/porin/nodes/n2", {"ip": "198.18.0.12"}),
        Event("delete", "/porin/nodes/n3", None),
    ]
    assert gw.body["create_request"] == {  # the range of the prefix
        "key": b64("/porin/nodes/"),
        "range_end": b64("/porin/nodes0"),
    }
    cancel()
    assert gw.client_closed.wait(10), "the cancelled watch's connection stayed open"


def test_a_stream_etcd_ended_is_closed_on_our_side_too():
    gw = Gateway(_lines(), end=True)
    got: list[Event] = []
    EtcdStore([f"http://127.0.0.1:{gw.port}"]).watch_prefix("/porin/nodes/", got.append)
    assert gw.client_closed.wait(10), "the ended stream's socket was left in CLOSE-WAIT"
    assert len(got) == 2


def test_a_watch_etcd_never_confirms_is_refused_and_closed():
    # until etcd says the watch is made, a change could be in neither the
    # caller's next read nor the watch: the caller must not go on
    gw = Gateway([{"result": {"header": {}}}], end=False)
    store = EtcdStore([f"http://127.0.0.1:{gw.port}"], timeout=1.0)
    with pytest.raises(KvStoreError, match="was not made"):
        store.watch_prefix("/porin/nodes/", lambda ev: None)
    assert gw.client_closed.wait(10), "the refused watch's connection stayed open"
