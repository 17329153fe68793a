"""Minimal HTTP/1.0 JSON client for the agent's unix socket.

Used by the CNI plugin (where start-up time matters, so no http.client or
requests) and by the CLI.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

DEFAULT_SOCKET = "/var/run/porin/porin.sock"


class AgentUnavailable(ConnectionError):
    """The agent's socket cannot be reached."""


class ApiError(Exception):
    """The agent answered with an error status."""

    def __init__(self, status: int, message: str, cni_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.cni_code = cni_code


class AgentClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: object = None) -> object:
        """Send one request; return the decoded JSON body or raise ApiError."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.0\r\nHost: porin\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        sock = self._open()
        try:
            sock.sendall(head + payload)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise AgentUnavailable(
                f"porin-agent at {self.socket_path} did not answer within {self.timeout:g}s"
            ) from None
        except (ConnectionResetError, BrokenPipeError) as e:
            raise AgentUnavailable(f"porin-agent closed the connection: {e}") from None
        finally:
            sock.close()
        return _parse_response(b"".join(chunks))

    def _open(self) -> socket.socket:
        """A socket connected to the agent; AgentUnavailable says why not."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            self._connect(sock)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise AgentUnavailable(
                f"cannot reach porin-agent at {self.socket_path}: {e.strerror}; "
                "is porin-agent running?"
            ) from None
        except PermissionError:
            sock.close()
            raise AgentUnavailable(
                f"permission denied on {self.socket_path}; run as root"
            ) from None
        except TimeoutError:
            sock.close()
            raise AgentUnavailable(
                f"porin-agent at {self.socket_path} did not answer within {self.timeout:g}s"
            ) from None
        return sock

    def _connect(self, sock: socket.socket) -> None:
        """Connect, waiting while the agent's listen backlog is full: a unix
        socket with a timeout answers that with EAGAIN at once instead of
        blocking (many runtimes may call the plugin at the same moment)."""
        deadline = time.monotonic() + self.timeout
        pause = 0.002
        while True:
            try:
                sock.connect(self.socket_path)
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise TimeoutError("the agent's listen backlog stayed full") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def stream(self, path: str) -> Iterator[Any]:
        """GET a streamed reply (application/x-ndjson): each line's JSON as it comes."""
        sock = self._open()
        try:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: porin\r\n\r\n".encode())
            yield from read_stream(sock.makefile("rb"))
        except TimeoutError:
            raise AgentUnavailable(
                f"porin-agent at {self.socket_path} went silent for {self.timeout:g}s"
            ) from None
        finally:
            sock.close()


def read_stream(f: BinaryIO) -> Iterator[Any]:
    """The JSON lines of an HTTP/1.0 reply read from `f`; a 4xx/5xx raises ApiError."""
    status_line = f.readline().decode(errors="replace")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise AgentUnavailable(f"malformed status line: {status_line.strip()!r}") from None
    while f.readline().strip():
        pass  # headers
    if status >= 400:
        body = f.read()
        data = json.loads(body) if body.strip() else {}
        raise ApiError(status, data.get("error", status_line.strip()), data.get("cniCode"))
    for line in f:
        if line.strip():
            yield json.loads(line)


def _parse_response(raw: bytes) -> object:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AgentUnavailable("porin-agent sent an incomplete response")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise AgentUnavailable(f"porin-agent sent a malformed status line: {status_line}") from None
    data = json.loads(body) if body.strip() else None
    if status >= 400:
        msg = data.get("error", status_line) if isinstance(data, dict) else status_line
        code = data.get("cniCode") if isinstance(data, dict) else None
        raise ApiError(status, msg, code)
    return data
