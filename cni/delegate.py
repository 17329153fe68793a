"""Delegated IPAM: run the IPAM plugin named in the netconf, as SPEC.md prescribes.

The plugin is looked up in CNI_PATH and run with the same stdin and CNI_*
environment; its error JSON is passed through to the runtime unchanged.
"""

from __future__ import annotations

import json
import os

from porin.cni.errors import PORIN_IPAM_PLUGIN, CniError


def find_plugin(name: str, path: list[str]) -> str:
    for d in path:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise CniError(
        PORIN_IPAM_PLUGIN,
        f"IPAM plugin {name!r} not found in CNI_PATH",
        f"searched: {':'.join(path) or '(empty)'}",
    )


def run_ipam(
    name: str, command: str, stdin: bytes, environ: dict[str, str], path: list[str]
) -> dict | None:
    """Run the IPAM plugin; the parsed result for ADD, None for the others."""
    import subprocess  # only when an IPAM plugin is configured: keep the common path light

    binary = find_plugin(name, path)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run(
            [binary], input=stdin, env=env, capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(PORIN_IPAM_PLUGIN, f"IPAM plugin {name} {command} failed: {e}") from None
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            code = int(err.get("code", PORIN_IPAM_PLUGIN))
            msg = str(err.get("msg", "error"))
            details = str(err.get("details", ""))
        except (ValueError, AttributeError, TypeError):
            code, msg = PORIN_IPAM_PLUGIN, f"exit status {proc.returncode}"
            details = (out or proc.stderr.strip()).decode(errors="replace")
        raise CniError(code, f"IPAM plugin {name} {command}: {msg}", details)
    if command != "ADD":
        return None
    try:
        result = json.loads(out)
    except ValueError:
        raise CniError(
            PORIN_IPAM_PLUGIN, f"IPAM plugin {name} returned a result that is not JSON"
        ) from None
    if not isinstance(result, dict):
        raise CniError(PORIN_IPAM_PLUGIN, f"IPAM plugin {name} returned a malformed result")
    return result
