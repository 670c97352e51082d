"""The one exception the client raises for failed calls, and its "no daemon" special case."""

from __future__ import annotations


class EaselError(Exception):
    """A call failed. `code` is the gRPC status name ("INVALID_ARGUMENT", "NOT_FOUND",
    "RESOURCE_EXHAUSTED", "CANCELLED", "FAILED_PRECONDITION", "UNAVAILABLE", ...); `message` is
    the daemon's explanation, written to be shown to a person as it is.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})" if message else code)
        self.code = code
        self.message = message


class DaemonNotRunningError(EaselError):
    """Nothing answers on the socket (code "UNAVAILABLE"): the daemon is not started, or the socket
    belongs to someone else. A plugin can catch this to offer starting it (`easel daemon start`).
    """

    def __init__(self, socket: str, message: str) -> None:
        super().__init__("UNAVAILABLE", message)
        self.socket = socket
