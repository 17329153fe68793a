"""The kernel's tick rate (HZ), which the datapath's clock is built on.

The datapath reads time with bpf_jiffies64(), a plain load of the kernel's
tick counter, instead of bpf_ktime_get_ns(): on this VM the clock read
costs about 30 ns, a fifth of an established flow's whole program. The C
side turns jiffies into seconds of CLOCK_MONOTONIC with KERNEL_HZ
(bpf/lib/clock.h), so the conntrack and NAT tables keep the unit that user
space compares with `time.clock_gettime(CLOCK_MONOTONIC)`; jiffies and the
monotonic clock agree to within a tick plus the sub-second delay before the
first tick at boot.

HZ comes from the kernel's build configuration when it is readable
(/boot/config-RELEASE or /proc/config.gz), else from /proc/timer_list,
whose tick counter and monotonic time only fit one of the usual HZ values.
"""

from __future__ import annotations

import functools
import gzip
import os
import re

# what the kernel may be built with (kernel/Kconfig.hz, plus odd ones seen in the wild)
CANDIDATE_HZ = (24, 48, 100, 128, 200, 250, 256, 300, 500, 1000, 1024, 1200)


class ClockError(RuntimeError):
    """The kernel's HZ could not be determined."""


def initial_jiffies(hz: int) -> int:
    """jiffies_64 at boot: INITIAL_JIFFIES = (unsigned long)(unsigned int)(-300 * HZ)."""
    return (-300 * hz) & 0xFFFFFFFF


def hz_from_config(text: str) -> int | None:
    m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.M)
    return int(m.group(1)) if m else None


def hz_from_timer_list(now_ns: int, jiffies: int) -> int | None:
    """The HZ under which `jiffies` counts the `now_ns` since boot (within 5 s)."""
    best, best_err = None, 5.0
    for hz in CANDIDATE_HZ:
        err = abs((jiffies - initial_jiffies(hz)) / hz - now_ns / 1e9)
        if err < best_err:
            best, best_err = hz, err
    return best


def _read_config() -> str | None:
    release = os.uname().release
    try:
        with open(f"/boot/config-{release}") as f:
            return f.read()
    except OSError:
        pass
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        return None


def _read_timer_list() -> tuple[int, int] | None:
    now_ns = jiffies = None
    try:
        with open("/proc/timer_list") as f:
            for line in f:
                if now_ns is None and line.startswith("now at "):
                    now_ns = int(line.split()[2])
                elif line.startswith("jiffies: "):
                    jiffies = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        return None
    if now_ns is None or jiffies is None:
        return None
    return now_ns, jiffies


@functools.cache
def kernel_hz() -> int:
    """The running kernel's HZ (cached: it cannot change while it runs)."""
    text = _read_config()
    hz = hz_from_config(text) if text else None
    if hz:
        return hz
    sample = _read_timer_list()
    hz = hz_from_timer_list(*sample) if sample else None
    if hz:
        return hz
    raise ClockError(
        "cannot determine the kernel's HZ: no CONFIG_HZ in /boot/config-"
        f"{os.uname().release} or /proc/config.gz, and /proc/timer_list is unreadable "
        "(the agent must run as root)"
    )
