"""Where the daemon listens, found exactly as the `easel` CLI finds it (proto/src/paths.rs).

- `$EASEL_SOCKET` when set and not empty;
- else `$XDG_RUNTIME_DIR/easel/easeld.sock`;
- else `<temp dir>/easel-<euid>/easeld.sock`.

Also: why a socket cannot be reached, in words a person can act on.
"""

from __future__ import annotations

import os
import socket as socket_module
import tempfile


def default_socket_path() -> str:
    """The socket the daemon listens on when nothing else is said."""
    explicit = os.environ.get("EASEL_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "easel", "easeld.sock")
    return os.path.join(tempfile.gettempdir(), f"easel-{os.geteuid()}", "easeld.sock")


def unreachable_reason(path: str) -> str | None:
    """Why nothing answers on `path`, or None when a connection can be made.

    gRPC reports a missing daemon as a bare UNAVAILABLE; a plain connect tells the cases apart
    (the same wording as the CLI's).
    """
    probe = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return f"no easel daemon is listening on {path}; start one with `easel daemon start`"
    except PermissionError:
        return (
            f"permission denied on the daemon socket {path}: a daemon serves only the user it runs "
            "as, so run as that user or start your own daemon (set EASEL_SOCKET to a socket of yours)"
        )
    except OSError as error:
        return f"cannot connect to the easel daemon on {path}: {error.strerror or error}"
    finally:
        probe.close()
    return None
