"""Servers and clients the integration tests run in namespaces: each answers
with the address it saw the other side as, so a test can tell what the
datapath translated."""

from __future__ import annotations

import subprocess

# TCP and UDP on one port: every line (TCP) or datagram (UDP) is answered
# with the peer's address; a TCP connection stays open until the client
# closes it
WHOAMI = """
import asyncio, sys
port = int(sys.argv[1])
async def handle(r, w):
    peer = w.get_extra_info("peername")
    while await r.readline():
        w.write(f"{peer[0]}\\n".encode()); await w.drain()
    w.close()
class Udp(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, peer): self.t.sendto(peer[0].encode(), peer)
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", port, backlog=1024)
    await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("0.0.0.0", port))
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

# one TCP exchange: prints what the server saw, and the peer the socket has
TCP_ONCE = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hi\\n"); seen = s.makefile().readline().strip()
print(seen, *s.getpeername())
"""

# one UDP datagram from an unconnected socket (as dig sends): what the server
# saw, and where the answer came from; an optional payload size
UDP_ONCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
size = int(sys.argv[3]) if len(sys.argv) > 3 else 2
s.sendto(b"h" * size, (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(65535)
print(data.decode(), *peer)
"""

# a TCP connection held open: a line on stdin sends one line and prints
# the answer; EOF closes
TCP_HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile()
print("ready", flush=True)
for _ in sys.stdin:
    s.sendall(b"again\\n"); print(f.readline().strip(), flush=True)
"""


def start(ns, script: str, *args: str) -> subprocess.Popen:
    """Run a server (or holding client) in `ns` until it says it is ready."""
    p = ns.popen(
        ["python3", "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise RuntimeError(f"{script.splitlines()[1]}... did not start: {line!r}")
    return p


def tcp(ns, host: str, port: int, check: bool = True) -> subprocess.CompletedProcess:
    return ns.exec(["python3", "-c", TCP_ONCE, host, str(port)], check=check)


def udp(ns, host: str, port: int, size: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    return ns.exec(["python3", "-c", UDP_ONCE, host, str(port), str(size)], check=check)
