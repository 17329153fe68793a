"""DEL while the agent is down: remove the veth now, leave the rest to the agent.

Deleting the host-side veth (one RTM_DELLINK over a raw netlink socket, no
pyroute2) also removes the pod side and the host route, so the pod is cut
off at once. The endpoint record, its map entry and its address are
released by the agent on its next start, from the note left here.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_DELLINK = 17
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
IFLA_IFNAME = 3


def delete_link_by_name(name: str) -> bool:
    """Delete a network interface in the current netns; False if it did not exist."""
    attr_payload = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(attr_payload), IFLA_IFNAME) + attr_payload
    attr += b"\0" * (-len(attr) % 4)
    ifinfo = struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    body = ifinfo + attr
    msg = struct.pack("IHHII", 16 + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
        s.settimeout(5)
        s.sendto(msg, (0, 0))
        reply = s.recv(65536)
    _, mtype, _, _, _ = struct.unpack("IHHII", reply[:16])
    if mtype != NLMSG_ERROR:
        return True
    (code,) = struct.unpack("i", reply[16:20])
    if code == 0:
        return True
    if -code == errno.ENODEV:
        return False
    raise OSError(-code, f"cannot delete {name}: {os.strerror(-code)}")


def leave_pending_delete(agent_socket: str, name: str, record: dict[str, str]) -> str:
    """Note a DEL for the agent to finish on its next start; returns the note's path."""
    pending = os.path.join(os.path.dirname(agent_socket), "pending-delete")
    os.makedirs(pending, mode=0o700, exist_ok=True)
    path = os.path.join(pending, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
