"""Between the generated protobuf messages and the client's own types (and numpy arrays).

Kept in one place so the rest of the client never touches protobuf details such as oneofs,
unset sub-messages or tensor byte layouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from easel import types
from easel.v1 import easel_pb2 as pb

T = TypeVar("T")

# Tensor bytes are little-endian whatever the machine, so the numpy dtypes say so explicitly.
_DTYPES: Mapping[int, np.dtype] = {
    pb.DTYPE_F32: np.dtype("<f4"),
    pb.DTYPE_F16: np.dtype("<f2"),
}

PREVIEW_IMAGES: Mapping[str, int] = {
    "none": pb.PREVIEW_IMAGE_NONE,
    "approx": pb.PREVIEW_IMAGE_APPROX,
    "full": pb.PREVIEW_IMAGE_FULL,
}

DECODERS: Mapping[str, int] = {
    "full": pb.DECODER_FULL,
    "tiny": pb.DECODER_TINY,
}


def plain(cls: type[T], message: Any, **overrides: Any) -> T:
    """A dataclass filled from the message fields of the same names; repeated fields become lists."""
    values = {}
    for dataclass_field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = dataclass_field.name
        if name in overrides:
            values[name] = overrides[name]
            continue
        value = getattr(message, name)
        values[name] = list(value) if not isinstance(value, (str, bytes, int, float, bool)) else value
    return cls(**values)


def array_from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A (writable, native-order) numpy array from a Tensor message."""
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"the daemon sent a tensor of unknown dtype {tensor.dtype}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape)).astype(dtype.newbyteorder("="))


def tensor_from_array(array: Any) -> pb.Tensor:
    """A Tensor message from an array-like: float16 stays float16, everything else is float32."""
    values = np.asarray(array)
    dtype, code = (np.dtype("<f2"), pb.DTYPE_F16) if values.dtype == np.float16 else (np.dtype("<f4"), pb.DTYPE_F32)
    data = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return pb.Tensor(shape=list(values.shape), dtype=code, data=data)


def keep_alive_text(keep_alive: str | float | None) -> str:
    """The daemon's keep_alive text: strings pass through ("5m", "-1"); numbers are seconds."""
    if keep_alive is None:
        return ""
    if isinstance(keep_alive, str):
        return keep_alive
    # Milliseconds keep fractions exact in the daemon's Ollama-style syntax; negative = forever.
    return f"{round(float(keep_alive) * 1000)}ms"


def generate_event(message: pb.GenerateEvent) -> types.GenerateEvent | None:
    """The typed event, or None for a kind this client does not know (a newer daemon)."""
    kind = message.WhichOneof("event")
    if kind == "queued":
        return plain(types.Queued, message.queued)
    if kind == "started":
        return plain(types.Started, message.started)
    if kind == "progress":
        progress = message.progress
        return plain(
            types.Progress,
            progress,
            latent=array_from_tensor(progress.latent) if progress.HasField("latent") else None,
            preview_png=progress.preview_png or None,
        )
    if kind == "image":
        return plain(types.Image, message.image)
    if kind == "finished":
        finished = message.finished
        timings = {field.name: getattr(finished.timings, field.name) for field in finished.timings.DESCRIPTOR.fields}
        return types.Finished(job_id=finished.job_id, timings=timings)
    return None


def daemon_event(message: pb.DaemonEvent) -> types.DaemonEvent | None:
    """The typed event, or None for a kind this client does not know (a newer daemon)."""
    kind = message.WhichOneof("event")
    if kind == "job":
        return plain(types.JobEvent, message.job, unix_ms=message.unix_ms)
    if kind == "model":
        return plain(types.ModelEvent, message.model, unix_ms=message.unix_ms)
    if kind == "import":
        return plain(types.ImportNotice, getattr(message, "import"), unix_ms=message.unix_ms)
    return None


def running(reply: pb.ListRunningReply) -> types.Running:
    return types.Running(
        models=[plain(types.RunningModel, model) for model in reply.models],
        budget_bytes=reply.budget_bytes,
        used_bytes=reply.used_bytes,
    )


def tokens(reply: pb.TokenizeReply) -> types.Tokens:
    return plain(types.Tokens, reply, chunks=[plain(types.TokenChunk, chunk) for chunk in reply.chunks])
