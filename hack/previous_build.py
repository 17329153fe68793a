"""Another commit's Porin, runnable with this checkout's virtualenv.

`previous_build(rev, dest)` extracts commit `rev` (git archive) under
`dest/src` (with the previous release's BACKPORTS applied), lays out an
import root `dest/pkg/porin` as this checkout's editable install does
(porin/ with cli/, plus bpf, cni, daemon and maps from the top level), and
writes `dest/bin/{porin-agent,porin,porin-cni}`, which
run that build with this virtualenv's Python and libraries. The launchers
run in `dest` with -P, so nothing of this checkout shadows the old modules
(the agent's compile worker, a `python -m` child, inherits both). Used by
tests/integration/test_upgrade.py to replace an agent of the previous
release by this one; `next_build(dest, patches)` does the same for this
work tree with `patches` applied, a stand-in for the release after this one
(e.g. one that changes a map's layout).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from porinlab import ROOT, VENV_BIN

# the commit before the reliability work (issue 13): the previous release
PREVIOUS_RELEASE = "261dfe1"

# (file, text, replacement): fixes a point release of PREVIOUS_RELEASE would
# carry, applied to its source. The cluster state listed the endpoints under
# the manager's lock while holding its own, and an ADD takes them the other
# way round: an ADD meeting an ipcache event hung the agent (fixed in f1caf41;
# the upgrade test met it when its second pod's ADD met the first one's event).
BACKPORTS = [
    (
        "daemon/agent.py",
        """            local_endpoints=lambda: [
                e for e in self.manager.list() if e.state == EndpointState.READY
            ],
            apply_service=self._apply_cluster_service,""",
        """            local_endpoints=lambda: [
                e for e in self.manager.snapshot() if e.state == EndpointState.READY
            ],
            apply_service=self._apply_cluster_service,""",
    ),
]

ENTRY_POINTS = {
    "porin-agent": "porin.daemon.agent",
    "porin": "porin.cli.main",
    "porin-cni": "porin.cni.plugin",
}


Patch = tuple[str, str, str]  # (file, text, replacement)


def _apply(src: Path, patches: list[Patch], what: str) -> None:
    for name, text, fixed in patches:
        path = src / name
        code = path.read_text()
        if code.count(text) != 1:
            raise RuntimeError(f"{what}: the patch to {name} does not apply")
        path.write_text(code.replace(text, fixed))


def previous_build(rev: str, dest: Path) -> Path:
    """The launchers' directory of commit `rev`'s build under `dest`."""
    src = dest / "src"
    src.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
        ).stdout
    except subprocess.CalledProcessError as e:
        raise RuntimeError(
            f"commit {rev} is not in {ROOT} (a shallow clone?): {e.stderr.decode().strip()}"
        ) from None
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    if rev == PREVIOUS_RELEASE:
        _apply(src, BACKPORTS, f"backport to {rev}")
    return _launchers(src, dest)


def next_build(dest: Path, patches: list[Patch]) -> Path:
    """The launchers' directory of this work tree's build with `patches`."""
    src = dest / "src"
    src.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    for name in files.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():  # a file deleted from the work tree is not in it
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    _apply(src, patches, "the next build")
    return _launchers(src, dest)


def _launchers(src: Path, dest: Path) -> Path:
    pkg, bin_dir = dest / "pkg" / "porin", dest / "bin"
    for d in (pkg, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    for entry in (src / "porin").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for sub in ("bpf", "cni", "daemon", "maps"):
        (pkg / sub).symlink_to(src / sub)
    for name, module in ENTRY_POINTS.items():
        launcher = bin_dir / name
        launcher.write_text(
            "#!/bin/sh\n"
            f"cd {dest}\n"
            f"PYTHONPATH={dest / 'pkg'} exec {VENV_BIN / 'python'} -P -c "
            f'\'import sys; from {module} import main; sys.argv[0] = "{name}"; '
            'sys.exit(main())\' "$@"\n'
        )
        launcher.chmod(0o755)
    return bin_dir
