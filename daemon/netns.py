"""Network-namespace switching for the calling thread.

setns(2) with CLONE_NEWNET changes only the calling thread, and a netlink
socket stays in the namespace it was created in. So the agent opens a
netlink socket inside a pod's namespace by entering it briefly on the
request thread; no fork, no helper process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute

from porin.errors import CONTAINER_UNKNOWN, PorinError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsError(OSError, PorinError):
    """The network namespace cannot be opened or entered."""

    http_status = 400
    cni_code = CONTAINER_UNKNOWN


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """Open a netns file; NetnsError if it is missing or not a netns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(2, f"network namespace {path} does not exist") from None
    except OSError as e:
        raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from None
    return fd


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the netns at `path`."""
    target = open_netns(path)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except NetnsError as e:
            raise NetnsError(e.errno, f"{path} is not a network namespace: {e.strerror}") from None
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def iproute_in(path: str) -> IPRoute:
    """An IPRoute whose netlink socket lives in the netns at `path`."""
    with entered(path):
        return IPRoute()


def same_netns(path: str) -> bool:
    """True when `path` is the netns the calling thread is in."""
    a = os.stat(path)
    b = os.stat("/proc/thread-self/ns/net")
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
