"""porin/client.py against a unix socket whose listen backlog is full."""

from __future__ import annotations

import json
import socket
import threading

from porin.client import AgentClient


def test_a_full_listen_backlog_is_waited_out_not_an_error(tmp_path):
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    fillers = []
    while True:  # fill the backlog: a connect with a timeout now gets EAGAIN
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    result = {}

    def ask():
        result["body"] = AgentClient(path, timeout=10).get("/v1/healthz")

    t = threading.Thread(target=ask)
    t.start()
    t.join(0.3)
    assert t.is_alive()  # waiting for room, not failed
    body = json.dumps({"ok": True}).encode()
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for _ in range(len(fillers) + 1):
        conn, _ = server.accept()
        conn.settimeout(0.5)
        try:
            conn.recv(4096)
            conn.sendall(reply)
        except TimeoutError:
            pass
        conn.close()
    t.join(10)
    assert result["body"] == {"ok": True}
    for s in fillers:
        s.close()
    server.close()
