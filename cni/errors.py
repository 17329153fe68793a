"""The plugin's error to the runtime; the codes are porin/errors.py's."""

from __future__ import annotations

from porin.errors import (  # noqa: F401  (the codes, re-exported for the plugin's modules)
    CONTAINER_UNKNOWN,
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    NOT_AVAILABLE,
    PORIN_CHECK_FAILED,
    PORIN_CONFLICT,
    PORIN_INTERFACE,
    PORIN_INTERNAL,
    PORIN_IPAM_EXHAUSTED,
    PORIN_IPAM_PLUGIN,
    TRY_AGAIN,
    UNSUPPORTED_FIELD,
)


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
