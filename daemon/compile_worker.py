"""The child process that compiles the datapath (see daemon/compiler.py).

Reads {"entries": {entry: [program, ...]}, "cflags": [...], "pinDir": path}
on stdin, compiles each entry file with bcc, loads its programs and pins
them as <pinDir>/<program>. Exits 0 when every program is pinned; on any
error it removes what it pinned (children for other entries pin into the
same directory at the same time), says why on stderr and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

from porin.daemon.datapath import DatapathError, compile_entry
from porin.maps import syscall


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    req = json.load(sys.stdin)
    pin_dir = req["pinDir"]
    pinned: list[str] = []
    try:
        os.makedirs(pin_dir, exist_ok=True)
        modules = []
        for entry, names in req["entries"].items():
            module, progs = compile_entry(entry, req["cflags"], names)
            modules.append(module)
            for prog in progs.values():
                path = os.path.join(pin_dir, prog.name)
                syscall.obj_pin(prog.fd, path)
                pinned.append(path)
    except (DatapathError, OSError) as e:
        for path in pinned:  # only its own: other children pin beside it
            with contextlib.suppress(OSError):
                os.unlink(path)
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
