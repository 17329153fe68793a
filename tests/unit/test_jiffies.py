"""The kernel HZ detection behind the datapath's jiffies clock."""

from __future__ import annotations

import pytest

from porin.daemon import jiffies
from porin.daemon.jiffies import (
    ClockError,
    hz_from_config,
    hz_from_timer_list,
    initial_jiffies,
    kernel_hz,
)


def test_initial_jiffies_wraps_32_bit_jiffies_five_minutes_after_boot():
    assert initial_jiffies(250) == 2**32 - 300 * 250
    assert initial_jiffies(1000) == 2**32 - 300_000


def test_hz_from_config():
    assert hz_from_config("CONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n") == 250
    assert hz_from_config("# CONFIG_HZ is not set\n") is None


@pytest.mark.parametrize("hz", [100, 250, 300, 1000])
def test_hz_from_timer_list_picks_the_one_consistent_rate(hz):
    uptime_s = 9762.7
    ticks = initial_jiffies(hz) + int((uptime_s - 0.25) * hz)  # first tick a bit after boot
    assert hz_from_timer_list(int(uptime_s * 1e9), ticks) == hz


def test_hz_from_timer_list_rejects_nonsense():
    assert hz_from_timer_list(10 * 10**9, 12345) is None


def test_kernel_hz_agrees_with_the_running_kernels_tick_counter():
    sample = jiffies._read_timer_list()
    assert sample is not None, "/proc/timer_list unreadable (tests run as root)"
    assert kernel_hz() == hz_from_timer_list(*sample)


def test_kernel_hz_without_any_source_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(jiffies, "_read_config", lambda: None)
    monkeypatch.setattr(jiffies, "_read_timer_list", lambda: None)
    kernel_hz.cache_clear()
    try:
        with pytest.raises(ClockError, match="cannot determine the kernel's HZ"):
            kernel_hz()
    finally:
        kernel_hz.cache_clear()
