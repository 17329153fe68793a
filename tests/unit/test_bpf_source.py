"""daemon/bpf_source.py flatten(): quoted includes inlined once, with #line markers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from porin.bpf import SOURCE_DIR
from porin.daemon.bpf_source import flatten


def tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_file_without_includes(tmp_path: Path) -> None:
    tree(tmp_path, {"prog.c": "int x;\nint y;\n"})
    assert flatten(tmp_path / "prog.c") == '#line 1 "prog.c"\nint x;\nint y;\n'


def test_quoted_include_is_inlined_with_line_markers(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '/* prog */\n#include "lib/a.h"\nint main_x;\n',
            "lib/a.h": "int a1;\nint a2;\n",
        },
    )
    assert flatten(tmp_path / "prog.c") == (
        '#line 1 "prog.c"\n'
        "/* prog */\n"
        '#line 1 "lib/a.h"\n'
        "int a1;\n"
        "int a2;\n"
        '#line 3 "prog.c"\n'
        "int main_x;\n"
    )


def test_system_includes_are_kept(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '#include <linux/bpf.h>\n#include "lib/a.h"\n',
            "lib/a.h": "#include <uapi/linux/if_ether.h>\nint a;\n",
        },
    )
    out = flatten(tmp_path / "prog.c")
    assert "#include <linux/bpf.h>\n" in out
    assert "#include <uapi/linux/if_ether.h>\n" in out
    assert '#include "' not in out


def test_each_header_is_inlined_once(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '#include "lib/common.h"\n#include "lib/a.h"\n#include "lib/common.h"\n',
            "lib/common.h": "int common;\n",
            "lib/a.h": '#include "common.h"\nint a;\n',
        },
    )
    out = flatten(tmp_path / "prog.c")
    assert out.count("int common;\n") == 1
    assert out.count("int a;\n") == 1
    assert out.index("int common;") < out.index("int a;")
    assert out == (
        '#line 1 "prog.c"\n'
        '#line 1 "lib/common.h"\n'
        "int common;\n"
        '#line 2 "prog.c"\n'
        '#line 1 "lib/a.h"\n'
        '#line 2 "lib/a.h"\n'
        "int a;\n"
        '#line 3 "prog.c"\n'
        '#line 4 "prog.c"\n'
    )


def test_nested_includes_resolve_relative_to_the_including_file(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '#include "lib/outer.h"\n',
            "lib/outer.h": '#include "inner/deep.h"\nint outer;\n',
            "lib/inner/deep.h": '#include "../sibling.h"\nint deep;\n',
            "lib/sibling.h": "int sibling;\n",
        },
    )
    out = flatten(tmp_path / "prog.c")
    assert [line for line in out.splitlines() if not line.startswith("#line")] == [
        "int sibling;",
        "int deep;",
        "int outer;",
    ]
    assert '#line 1 "lib/inner/deep.h"\n' in out
    assert '#line 1 "lib/sibling.h"\n' in out
    assert '#line 2 "lib/inner/deep.h"\n' in out


def test_include_cycle_terminates(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '#include "a.h"\n',
            "a.h": '#include "b.h"\nint a;\n',
            "b.h": '#include "a.h"\nint b;\n',
        },
    )
    out = flatten(tmp_path / "prog.c")
    assert out.count("int a;") == 1
    assert out.count("int b;") == 1


def test_include_spacing_variants(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '  #  include   "a.h"  \n\t#include\t"b.h"\n',
            "a.h": "int a;\n",
            "b.h": "int b;\n",
        },
    )
    out = flatten(tmp_path / "prog.c")
    assert out == (
        '#line 1 "prog.c"\n'
        '#line 1 "a.h"\n'
        "int a;\n"
        '#line 2 "prog.c"\n'
        '#line 1 "b.h"\n'
        "int b;\n"
        '#line 3 "prog.c"\n'
    )


def test_relative_entry_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree(tmp_path, {"prog.c": '#include "a.h"\n', "a.h": "int a;\n"})
    monkeypatch.chdir(tmp_path)
    assert flatten(Path("prog.c")) == flatten(tmp_path / "prog.c")


def test_missing_include_names_the_including_file_and_line(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "prog.c": '#include "lib/a.h"\n',
            "lib/a.h": '/* a */\n#include "missing.h"\nint a;\n',
        },
    )
    with pytest.raises(FileNotFoundError) as excinfo:
        flatten(tmp_path / "prog.c")
    msg = str(excinfo.value)
    assert msg.startswith("lib/a.h:2:")
    assert "missing.h" in msg


def test_missing_include_in_entry(tmp_path: Path) -> None:
    tree(tmp_path, {"prog.c": 'int x;\n\n#include "nope.h"\n'})
    with pytest.raises(FileNotFoundError, match=r"^prog\.c:3: .*nope\.h"):
        flatten(tmp_path / "prog.c")


def test_missing_entry(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        flatten(tmp_path / "absent.c")


def test_header_without_final_newline(tmp_path: Path) -> None:
    """A header whose last line has no newline must not glue the next #line marker
    onto that line: the marker must start a line of its own or cpp rejects it."""
    tree(
        tmp_path,
        {
            "prog.c": '#include "a.h"\nint main_x;\n',
            "a.h": "int a;",  # no trailing newline, as many editors leave it
        },
    )
    out = flatten(tmp_path / "prog.c")
    for line in out.splitlines():
        assert "#line" not in line or line.startswith("#line"), repr(line)
    assert "int a;" in out.splitlines()
    assert "int main_x;" in out.splitlines()


# --- the real datapath ---------------------------------------------------------


def test_real_entry_files_flatten() -> None:
    seen = set()
    for entry in sorted(SOURCE_DIR.glob("bpf_*.c")):
        out = flatten(entry)
        assert out.startswith(f'#line 1 "{entry.name}"\n')
        assert not re.search(r'^\s*#\s*include\s+"', out, re.MULTILINE)
        for header in sorted((SOURCE_DIR / "lib").glob("*.h")):
            n = out.count(f'#line 1 "lib/{header.name}"\n')
            assert n <= 1  # each header inlined at most once
            if n:
                seen.add(header.name)
        assert "#include <uapi/linux/bpf.h>" in out
        # every #line marker starts a line
        for line in out.splitlines():
            assert "#line" not in line or line.startswith("#line"), repr(line)
    # no header is dead: every one is used by some program
    assert seen == {h.name for h in (SOURCE_DIR / "lib").glob("*.h")}
