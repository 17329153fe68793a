"""CNI error codes (SPEC.md "Error") and Porin's own (100 and up)."""

from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50  # STATUS: cannot service ADD requests

# Porin's own
PORIN_INTERNAL = 100
PORIN_AGENT_UNREACHABLE = 101
PORIN_IPAM_EXHAUSTED = 102
PORIN_IPAM_PLUGIN = 103
PORIN_CONFLICT = 104
PORIN_CHECK_FAILED = 105
PORIN_INTERFACE = 106  # the pod interface cannot be created or configured


class CniError(Exception):
    """An error the plugin reports to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
