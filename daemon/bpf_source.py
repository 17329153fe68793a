"""Prepare a datapath entry file for bcc.

bcc only rewrites map operations (`map.lookup(...)`) written in the main
file it compiles; the same call in an included header becomes an indirect
call the verifier rejects. Porin keeps one concern per `lib/*.h` header, so
before compiling, the project's own quoted includes are inlined into one
text, with `#line` markers so compiler errors still name the real file and
line. System includes (`<...>`) are left to the compiler.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def flatten(entry: Path, include_dir: Path | None = None) -> str:
    """The entry file with every quoted include inlined once, in order. An
    include is found next to the file that names it, else in `include_dir`
    (a program outside bpf/, such as a test's, including "lib/...")."""
    seen: set[Path] = set()
    out: list[str] = []
    _inline(entry.resolve(), entry.resolve().parent, seen, out, include_dir)
    return "".join(out)


def _inline(
    path: Path, root: Path, seen: set[Path], out: list[str], include_dir: Path | None = None
) -> None:
    if path in seen:
        return
    seen.add(path)
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    out.append(f'#line 1 "{rel}"\n')
    for lineno, line in enumerate(path.read_text().splitlines(keepends=True), start=1):
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        target = (path.parent / m.group(1)).resolve()
        if not target.exists() and include_dir is not None:
            target = (include_dir / m.group(1)).resolve()
        if not target.exists():
            raise FileNotFoundError(f"{rel}:{lineno}: included file {m.group(1)} not found")
        _inline(target, root, seen, out, include_dir)
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(f'#line {lineno + 1} "{rel}"\n')
