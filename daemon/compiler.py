"""Build the datapath's programs where the compiler's memory goes away,
and keep what was built.

bcc compiles with clang and LLVM in the calling process, and most of what
they allocate stays there afterwards: an agent that compiled its three
entry files held about 215 MiB for the rest of its life. The agent
therefore never imports bcc. A child process (daemon/compile_worker.py)
compiles every entry file the config needs, loads the programs and pins
them under <bpffs>/programs/<build id>/, then exits and gives its memory
back; the agent opens the pinned programs.

The build id hashes everything that goes into the programs: the flattened
source of each entry file, the build flags (node settings and map sizes),
the kernel release and bcc's version. When a restart finds the pins of its
build id, it compiles nothing, provided every map those programs use is
still the map pinned under that name (reconcile_pins may have recreated
one, or someone removed a pin): otherwise it builds again. Pins of other
builds are removed once this one is open; programs still attached to a
device live on until they are replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from porin.bpf import SOURCE_DIR
from porin.daemon.bpf_source import flatten
from porin.daemon.config import AgentConfig
from porin.daemon.datapath import SOCK_PROGRAMS, DatapathError, Program, build_flags
from porin.daemon.map_specs import map_specs, reconcile_pins
from porin.maps import syscall

log = logging.getLogger(__name__)

PROGRAMS_DIR = "programs"
TRACE_DIR = "trace"  # the trace build's maps and programs, under the bpffs root
TRACE_MAPS = ("trace_notes",)  # maps only the trace build has (bpf/lib/trace.h)
COMPILE_TIMEOUT = 300  # seconds: three entry files take about 5 s here


def entries_for(cfg: AgentConfig) -> dict[str, list[str]]:
    """The entry files, and their programs, that `cfg` needs."""
    entries = {"bpf_lxc.c": ["from_container", "to_container"]}
    if cfg.devices:
        entries["bpf_host.c"] = ["from_netdev", "to_netdev", "from_host_lo"]
    if cfg.tunnel_mode != "disabled":
        vxlan = ["from_overlay"] if cfg.tunnel_mode == "vxlan" else []
        entries["bpf_overlay.c"] = [*vxlan, "host_to_overlay"]
    if cfg.devices and cfg.xdp_mode != "disabled":
        entries["bpf_xdp.c"] = ["from_xdp"]
    if cfg.loopback_host_ports:
        entries["bpf_sock.c"] = list(SOCK_PROGRAMS)
    return entries


def _bcc_version() -> str:
    spec = importlib.util.find_spec("bcc")
    if spec is None or spec.origin is None:
        raise DatapathError("bcc is not installed (Debian: apt-get install python3-bpfcc)")
    version = os.path.join(os.path.dirname(spec.origin), "version.py")
    try:
        with open(version) as f:
            return f.read()
    except OSError:
        return spec.origin


def build_id(entries: dict[str, list[str]], cflags: list[str]) -> str:
    h = hashlib.sha256()
    for entry, names in sorted(entries.items()):
        h.update(f"{entry}:{','.join(names)}\0".encode())
        h.update(flatten(SOURCE_DIR / entry).encode())
    h.update("\0".join(cflags).encode())
    h.update(platform.release().encode())
    h.update(_bcc_version().encode())
    return h.hexdigest()[:16]


def load_programs(cfg: AgentConfig) -> dict[str, Program]:
    """Every program `cfg` needs, from this build's pins or freshly built."""
    return _load(cfg, entries_for(cfg), build_flags(cfg), "datapath", migrate=True)


def trace_config(cfg: AgentConfig) -> AgentConfig:
    """The trace build's config: the same settings, its maps and programs
    under <bpffsRoot>/trace (bpf/lib/trace.h, daemon/trace.py)."""
    return dataclasses.replace(cfg, bpffs_root=os.path.join(cfg.bpffs_root, TRACE_DIR))


def load_trace_programs(cfg: AgentConfig) -> dict[str, Program]:
    """The trace build of the entry programs `cfg` runs (not the socket
    programs: a trace starts at a device), built on first use and kept
    pinned like the live build, so a restart reuses it."""
    tcfg = trace_config(cfg)
    entries = {e: names for e, names in entries_for(cfg).items() if e != "bpf_sock.c"}
    cflags = [*build_flags(tcfg), "-DPORIN_TRACE=1"]
    return _load(tcfg, entries, cflags, "trace", extra_maps=TRACE_MAPS)


def _load(
    cfg: AgentConfig,
    entries: dict[str, list[str]],
    cflags: list[str],
    what: str,
    extra_maps: tuple[str, ...] = (),
    migrate: bool = False,
) -> dict[str, Program]:
    os.makedirs(cfg.bpffs_root, exist_ok=True)
    try:
        # bcc would reuse a pin of the wrong shape as it is; the live maps'
        # state is carried over (daemon/map_migrate.py)
        reconcile_pins(cfg, migrate=migrate)
    except OSError as e:
        raise DatapathError(f"cannot check the pinned maps under {cfg.bpffs_root}: {e}") from e
    bid = build_id(entries, cflags)
    pin_dir = os.path.join(cfg.bpffs_root, PROGRAMS_DIR, bid)
    names = [n for ns in entries.values() for n in ns]
    started = time.monotonic()
    progs = _open_pinned(pin_dir, names, cfg, extra_maps)
    if progs is None:
        _build_in_child(cfg, entries, cflags, pin_dir)
        progs = _open_pinned(pin_dir, names, cfg, extra_maps)
        if progs is None:
            raise DatapathError(f"the compiled programs under {pin_dir} cannot be opened")
        log.info("%s build %s compiled in %.2fs", what, bid, time.monotonic() - started)
    else:
        log.info("%s build %s unchanged: pinned programs reused", what, bid)
    _remove_other_builds(cfg, bid)
    return progs


def _pinned_map_ids(cfg: AgentConfig, extra_maps: tuple[str, ...] = ()) -> set[int]:
    ids = set()
    for name in [*(spec.name for spec in map_specs(cfg)), *extra_maps]:
        try:
            fd = syscall.obj_get(os.path.join(cfg.bpffs_root, name), read_only=True)
        except syscall.BpfError:
            continue
        try:
            ids.add(syscall.map_info(fd).id)
        finally:
            os.close(fd)
    return ids


def _open_pinned(
    pin_dir: str, names: list[str], cfg: AgentConfig, extra_maps: tuple[str, ...] = ()
) -> dict[str, Program] | None:
    """The programs pinned in `pin_dir`, when all are there and use the pinned maps."""
    if not os.path.isdir(pin_dir):
        return None
    progs: dict[str, Program] = {}
    maps = _pinned_map_ids(cfg, extra_maps)
    try:
        for name in names:
            fd = syscall.obj_get(os.path.join(pin_dir, name))
            progs[name] = Program(name=name, fd=fd)
            stray = set(syscall.prog_info(fd)[1]) - maps
            if stray:
                raise LookupError(f"{name} uses maps {sorted(stray)} that are no longer pinned")
    except (syscall.BpfError, LookupError) as e:
        log.info("pinned build in %s not usable (%s): building again", pin_dir, e)
        for p in progs.values():
            os.close(p.fd)
        shutil.rmtree(pin_dir, ignore_errors=True)
        return None
    return progs


def _build_in_child(
    cfg: AgentConfig, entries: dict[str, list[str]], cflags: list[str], pin_dir: str
) -> None:
    """Each entry file compiled in a child of its own, as many at once as this
    process may use CPUs (clang and the verifier are CPU-bound: the five files
    take 24 s one after the other here, 15 s this way). bpf_lxc.c goes
    first and alone: it creates the maps the others share, so that no two
    children race to create one pinned map (the loser would fail). Should
    one fail anyway, it is built again, alone, once the others are done."""
    shutil.rmtree(pin_dir, ignore_errors=True)
    os.makedirs(pin_dir, exist_ok=True)
    deadline = time.monotonic() + COMPILE_TIMEOUT
    first = [e for e in entries if e == "bpf_lxc.c"]
    # the largest next, so that the small ones fill in beside it
    rest = sorted(
        (e for e in entries if e not in first), key=lambda e: -os.path.getsize(SOURCE_DIR / e)
    )
    cpus = max(1, len(os.sched_getaffinity(0)))
    failed = _run_children(first, entries, cflags, pin_dir, 1, deadline)
    failed |= _run_children(rest, entries, cflags, pin_dir, cpus, deadline)
    if failed:
        log.debug("compiler: again, one at a time: %s", ", ".join(failed))
        failed = _run_children(list(failed), entries, cflags, pin_dir, 1, deadline)
    if failed:
        shutil.rmtree(pin_dir, ignore_errors=True)
        entry, err = next(iter(failed.items()))
        tail = "\n".join(err.strip().splitlines()[-40:])
        raise DatapathError(f"compiling the datapath failed ({entry}):\n{tail}")


def _run_children(
    order: list[str],
    entries: dict[str, list[str]],
    cflags: list[str],
    pin_dir: str,
    parallel: int,
    deadline: float,
) -> dict[str, str]:
    """Compile `order` in up to `parallel` children at once; returns the
    entries that failed, with what they said. A child's stderr goes to a
    file: a verifier log can be megabytes, more than a pipe holds."""
    waiting = list(order)
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    failed: dict[str, str] = {}
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                entry = waiting.pop(0)
                request = {"entries": {entry: entries[entry]}, "cflags": cflags, "pinDir": pin_dir}
                err = tempfile.TemporaryFile("w+")
                child = subprocess.Popen(
                    [sys.executable, "-m", "porin.daemon.compile_worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    text=True,
                )
                assert child.stdin is not None
                child.stdin.write(json.dumps(request))  # a few KiB: the pipe holds it
                child.stdin.close()
                running[entry] = (child, err)
            done = [e for e, (c, _) in running.items() if c.poll() is not None]
            if not done:
                if time.monotonic() > deadline:
                    raise DatapathError(f"compiling the datapath took over {COMPILE_TIMEOUT}s")
                time.sleep(0.05)
                continue
            for entry in done:
                child, err = running.pop(entry)
                err.seek(0)
                text = err.read()
                err.close()
                for line in text.splitlines():
                    if line.strip():
                        log.debug("compiler: %s", line)
                if child.returncode != 0:
                    failed[entry] = text
    except BaseException:
        for child, err in running.values():
            child.kill()
            child.wait()
            err.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
        raise
    return failed


def _remove_other_builds(cfg: AgentConfig, keep: str) -> None:
    root = os.path.join(cfg.bpffs_root, PROGRAMS_DIR)
    for name in os.listdir(root):
        if name != keep:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            log.info("removed the pinned programs of build %s", name)
