"""The child process that compiles the datapath (see daemon/compiler.py).

Reads {"entries": {entry: [program, ...]}, "cflags": [...], "pinDir": path}
on stdin, compiles each entry file with bcc, loads its programs and pins
them as <pinDir>/<program>. Exits 0 when every program is pinned; on any
error it removes what it pinned, says why on stderr and exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

from porin.daemon.datapath import DatapathError, compile_entry
from porin.maps import syscall


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    req = json.load(sys.stdin)
    pin_dir = req["pinDir"]
    try:
        os.makedirs(pin_dir, exist_ok=True)
        modules = []
        for entry, names in req["entries"].items():
            module, progs = compile_entry(entry, req["cflags"], names)
            modules.append(module)
            for prog in progs.values():
                syscall.obj_pin(prog.fd, os.path.join(pin_dir, prog.name))
    except (DatapathError, OSError) as e:
        shutil.rmtree(pin_dir, ignore_errors=True)
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
