"""Errors shared by the agent, the CNI plugin and the CLI.

CNI error codes (the spec's, and Porin's own from 100) live here once, for
the plugin (cni/) and the agent (daemon/api.py) alike. An error the agent
can answer with is a PorinError: it carries its HTTP status and the CNI
code the plugin passes on to the runtime, so the API maps every error the
same way and a new error type needs no new case there.
"""

from __future__ import annotations

# CNI spec (SPEC.md "Error")
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
PORIN_IPAM_EXHAUSTED = 102
PORIN_IPAM_PLUGIN = 103
PORIN_CONFLICT = 104
PORIN_CHECK_FAILED = 105
PORIN_INTERFACE = 106  # the pod interface cannot be created or configured


class PorinError(Exception):
    """An error with the HTTP status and CNI code the agent answers it with.

    Subclasses set them as class attributes; an instance may override both
    (`PorinError("...", http_status=409)`)."""

    http_status = 500
    cni_code: int | None = PORIN_INTERNAL

    def __init__(
        self, message: str, http_status: int | None = None, cni_code: int | None = None
    ) -> None:
        super().__init__(message)
        if http_status is not None:
            self.http_status = http_status
        if cni_code is not None:
            self.cni_code = cni_code
