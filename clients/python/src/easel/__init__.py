"""easel: the Python client for easeld, the local Stable Diffusion daemon.

    import easel

    with easel.Client() as client:
        for event in client.generate("a lighthouse at dusk", steps=20, seed=1):
            if isinstance(event, easel.Progress):
                print(f"step {event.step}/{event.total}")
            elif isinstance(event, easel.Image):
                open(f"out-{event.index}.png", "wb").write(event.png)

The daemon listens on a Unix socket (found like the `easel` CLI finds it); start it with
`easel daemon start`. Failed calls raise `EaselError` with the daemon's message.
"""

from easel._socket import default_socket_path
from easel.client import Client, Generation, PreviewKind, Stream
from easel.errors import DaemonNotRunningError, EaselError
from easel.types import (
    DaemonEvent,
    Finished,
    GenerateEvent,
    Image,
    ImportNotice,
    JobEvent,
    ModelEvent,
    ModelInfo,
    Progress,
    Queued,
    Running,
    RunningModel,
    Started,
    Status,
    TokenChunk,
    Tokens,
)

__all__ = [
    "Client",
    "DaemonEvent",
    "DaemonNotRunningError",
    "EaselError",
    "Finished",
    "GenerateEvent",
    "Generation",
    "Image",
    "ImportNotice",
    "JobEvent",
    "ModelEvent",
    "ModelInfo",
    "PreviewKind",
    "Progress",
    "Queued",
    "Running",
    "RunningModel",
    "Started",
    "Status",
    "Stream",
    "TokenChunk",
    "Tokens",
    "default_socket_path",
]
