"""The typed values the client hands out: generation events, daemon events, model and status info.

Plain frozen dataclasses, independent of protobuf, so plugin code can match on them
(`isinstance(event, Image)` or `match event: case Image(png=png): ...`) without touching the
generated messages. Field names follow easel.proto.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# --- Generate: Queued, Started, Progress*, Image+, Finished -------------------------------------


@dataclass(frozen=True)
class Queued:
    """The job was accepted; `position` 0 means it runs next."""

    job_id: str
    position: int


@dataclass(frozen=True)
class Started:
    """The job began; `load_ms` is the time spent loading the model (0 when it was resident)."""

    job_id: str
    load_ms: int


@dataclass(frozen=True)
class Progress:
    """One denoising step (1-based `step` of `total`) of image `image_index`.

    `latent` (the current sample, float32 or float16, shape [1, C, H/f, W/f]) is there when the
    request asked for `stream_latents`; `preview_png` when it asked for a preview. Both come every
    `preview_every` steps and always on the last step.
    """

    step: int
    total: int
    elapsed_ms: int
    image_index: int
    latent: np.ndarray | None = field(default=None, repr=False, compare=False)
    preview_png: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Image:
    """A finished picture: an encoded PNG with A1111-style `parameters` text embedded."""

    index: int
    png: bytes = field(repr=False)
    seed: int
    width: int
    height: int
    parameters: str


@dataclass(frozen=True)
class Finished:
    """The job is done. `timings` in milliseconds: queue_ms, load_ms, encode_ms, denoise_ms,
    decode_ms, total_ms."""

    job_id: str
    timings: dict[str, int]


GenerateEvent = Queued | Started | Progress | Image | Finished

# --- WatchEvents: what happens in the daemon ----------------------------------------------------


@dataclass(frozen=True)
class JobEvent:
    """A job changed `state`: queued, started, progress (at most every 10%), finished, cancelled
    or failed (then `message` says why). `unix_ms` is when, by the daemon's clock."""

    unix_ms: int
    job_id: str
    model: str
    state: str
    position: int
    step: int
    total: int
    message: str


@dataclass(frozen=True)
class ModelEvent:
    """A model changed `state`: loading, loaded, unloaded (`reason`: expired, requested, replaced,
    shutdown), evicted, installed or removed."""

    unix_ms: int
    model: str
    state: str
    memory_bytes: int
    reason: str


@dataclass(frozen=True)
class ImportNotice:
    """An import or pull went through a stage (extracting, downloading, ...), then done or failed."""

    unix_ms: int
    name: str
    state: str
    bytes_done: int
    bytes_total: int
    message: str


DaemonEvent = JobEvent | ModelEvent | ImportNotice

# --- Models, residency, status, tokens ----------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """A model the daemon knows. `family`: sd1, sd2, sdxl (+ -inpaint, -lcm); `dtype`: float32 or
    float16; `source`: builtin, installed or path."""

    name: str
    path: str
    default_sampler: str
    prediction_type: str
    loaded: bool
    family: str
    dtype: str
    size_bytes: int
    source: str


@dataclass(frozen=True)
class RunningModel:
    """A resident model. `expires_unix_ms` 0 means it never unloads; `in_use` counts its jobs."""

    name: str
    memory_bytes: int
    device: str
    expires_unix_ms: int
    in_use: int
    path: str
    working_memory_bytes: int


@dataclass(frozen=True)
class Running:
    """What is resident (`easel ps`) and the memory budget it shares with running jobs."""

    models: list[RunningModel]
    budget_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class Status:
    """The daemon at a glance (`easel status`)."""

    version: str
    device: str
    queued_jobs: int
    running_jobs: int
    loaded_models: list[str]
    onnxruntime_library: str
    pid: int
    socket: str
    memory_used_bytes: int
    memory_budget_bytes: int
    working_memory_bytes: int
    # The model a request without `model` gets.
    default_model: str


@dataclass(frozen=True)
class TokenChunk:
    """Up to 75 tokens of the weighted prompt, each with its weight."""

    ids: list[int]
    tokens: list[str]
    weights: list[float]


@dataclass(frozen=True)
class Tokens:
    """A prompt as the model's tokenizer sees it: the plain tokenization (`ids`, `tokens`,
    `truncated`) and the weighted chunks easel actually encodes."""

    ids: list[int]
    tokens: list[str]
    truncated: bool
    chunks: list[TokenChunk]
