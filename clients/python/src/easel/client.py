"""The client: one gRPC channel on the daemon's Unix socket, and a typed method per call.

A thin layer over the generated stubs (easel.v1): it finds the socket the way the CLI does,
turns requests' keyword arguments into messages and replies into the dataclasses of
`easel.types`, and every gRPC failure into `EaselError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import grpc

from easel import _convert, _socket, types
from easel.errors import DaemonNotRunningError, EaselError
from easel.v1 import easel_pb2 as pb
from easel.v1 import easel_pb2_grpc as pb_grpc

T = TypeVar("T")

PreviewKind = Literal["none", "approx", "full"]

_CHANNEL_OPTIONS = [
    # Images and init images can be large; the daemon bounds what it accepts and sends itself.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # The socket is local: never let a proxy setting in the environment get involved.
    ("grpc.enable_http_proxy", 0),
]


def _error(error: grpc.RpcError, socket: str) -> EaselError:
    """The EaselError for a failed call, telling "no daemon" apart from the daemon's own errors."""
    code: grpc.StatusCode = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        reason = _socket.unreachable_reason(socket)
        if reason is not None:
            return DaemonNotRunningError(socket, reason)
    return EaselError(code.name, error.details() or "")


class Stream(Generic[T]):
    """An open stream of events from the daemon; iterate it.

    Closing it (`close()`, leaving a `with` block, or dropping it, e.g. by breaking out of a
    `for` loop) hangs up the call; for Generate the daemon then cancels the job at its next step.
    A failed call raises EaselError from the iteration; a closed one just ends.
    """

    def __init__(self, call: Any, convert: Callable[[Any], T | None], socket: str) -> None:
        self._call = call
        self._convert = convert
        self._socket = socket
        self._closed = threading.Event()

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        while True:
            try:
                message = next(self._call)
            except grpc.RpcError as error:
                if self._closed.is_set():
                    raise StopIteration from None
                raise _error(error, self._socket) from None
            event = self._convert(message)
            # None: an event kind newer than this client; skipping it keeps old plugins working.
            if event is not None:
                return event

    def close(self) -> None:
        """Hangs up. Safe from another thread, and to call twice."""
        self._closed.set()
        self._call.cancel()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): still hang up, so an abandoned job does not keep running.
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()


class Generation(Stream[types.GenerateEvent]):
    """The events of one Generate call: Queued, Started, Progress*, Image+, Finished.

    `job_id` is known once Queued has arrived (for `Client.cancel` from elsewhere).
    """

    job_id: str | None = None

    def __next__(self) -> types.GenerateEvent:
        event = super().__next__()
        if isinstance(event, types.Queued):
            self.job_id = event.job_id
        return event


class Client:
    """A connection to easeld.

    `socket`: the daemon's Unix socket; by default the one the CLI uses (`$EASEL_SOCKET`, else
    `$XDG_RUNTIME_DIR/easel/easeld.sock`, else `<temp dir>/easel-<euid>/easeld.sock`).
    `timeout`: seconds for each single-reply call (status, models, cancel, ...); None waits as
    long as it takes. Streams (generate, watch_events) have no deadline: close them instead.

    Connecting is lazy: a missing daemon shows up as `DaemonNotRunningError` on the first call. One
    client is safe to share between threads. Use it as a context manager, or call `close()`.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, timeout: float | None = None) -> None:
        self.socket: str = os.fspath(socket) if socket is not None else _socket.default_socket_path()
        self.timeout = timeout
        # "unix:" + an absolute path: grpcio's form for a Unix socket.
        self._channel = grpc.insecure_channel("unix:" + os.path.abspath(self.socket), options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.EaselStub(self._channel)

    def close(self) -> None:
        """Closes the channel; open streams end."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise _error(error, self.socket) from None

    # --- Generating -----------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        count: int | None = None,
        init_image: bytes | None = None,
        strength: float | None = None,
        mask_image: bytes | None = None,
        mask_blur: float | None = None,
        clip_skip: int | None = None,
        keep_alive: str | float | None = None,
        stream_latents: bool = False,
        preview: PreviewKind = "none",
        preview_every: int = 0,
        init_noise: Any | None = None,
        decoder: str = "full",
        guidance_cutoff: float | None = None,
        guidance_rescale: float | None = None,
        original_size: tuple[int, int] | None = None,
        crop_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
        refiner: str | None = None,
        refiner_switch: float | None = None,
    ) -> Generation:
        """Starts a job and returns its events as they happen.

        Every option left at None takes the daemon's default (see easel.proto): `model` the
        default model (a name, or an absolute path to a model folder), the model's native
        `width`/`height` and sampler, 20 `steps`, `guidance_scale` 7.5, a random `seed`
        (reported in each Image), one image. `count` images use seeds seed, seed+1, ...

        img2img: `init_image` (encoded PNG/JPEG bytes) with `strength` in (0, 1]. Inpainting: also
        `mask_image` (white is repainted) and `mask_blur` pixels. `keep_alive`: how long the model
        stays loaded afterwards ("5m", "-1" for ever, or seconds as a number).

        Streaming: `stream_latents` adds the raw latent (numpy) to Progress events; `preview`
        "approx" (cheap) or "full" (a VAE decode) adds a preview PNG; both every `preview_every`
        steps (0: every step). `init_noise`: unit-variance starting noise, an array of shape
        [1, 4, height/8, width/8] (float16 stays float16, anything else is sent as float32).

        Speed: `decoder` "tiny" decodes the final picture with the model's tiny VAE decoder
        (vae_decoder_tiny/, TAESD; several times faster, a little softer). `guidance_cutoff` in
        [0, 1] stops classifier-free guidance after that fraction of the steps (the rest run one
        UNet pass instead of two). `guidance_rescale` in [0, 1] is diffusers' guidance_rescale
        (0.7 against washed-out pictures at high guidance).

        SDXL models: `original_size` and `target_size` (width, height) and `crop_top_left` (top,
        left) are SDXL's size conditioning (diffusers' original_size, crops_coords_top_left and
        target_size); unset, the picture's size, (0, 0) and the picture's size.

        The request is checked by the daemon: a bad one raises EaselError("INVALID_ARGUMENT", ...)
        from the first iteration. Breaking out of the loop or closing the stream cancels the job.
        """
        if preview not in _convert.PREVIEW_IMAGES:
            raise ValueError(f"preview must be one of {', '.join(_convert.PREVIEW_IMAGES)}, not {preview!r}")
        if preview_every < 0:
            raise ValueError(f"preview_every must be 0 or more, not {preview_every}")
        if decoder not in _convert.DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(_convert.DECODERS)}, not {decoder!r}")
        request = pb.GenerateRequest(
            prompt=prompt,
            model=model or "",
            refiner=refiner or "",
            negative_prompt=negative_prompt or "",
            sampler=sampler or "",
            keep_alive=_convert.keep_alive_text(keep_alive),
            init_image=init_image or b"",
            mask_image=mask_image or b"",
            decoder=_convert.DECODERS[decoder],  # type: ignore[arg-type]
            preview=pb.PreviewOptions(
                stream_latents=stream_latents,
                every_n_steps=preview_every,
                image=_convert.PREVIEW_IMAGES[preview],  # type: ignore[arg-type]
            ),
        )
        optional = {
            "width": width,
            "height": height,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "count": count,
            "strength": strength,
            "mask_blur": mask_blur,
            "clip_skip": clip_skip,
            "guidance_cutoff": guidance_cutoff,
            "guidance_rescale": guidance_rescale,
            "aesthetic_score": aesthetic_score,
            "negative_aesthetic_score": negative_aesthetic_score,
            "refiner_switch": refiner_switch,
        }
        for name, value in optional.items():
            # Proto3 `optional`: unset means "the daemon's default", distinct from 0.
            if value is not None:
                setattr(request, name, value)
        if init_noise is not None:
            request.init_noise.CopyFrom(_convert.tensor_from_array(init_noise))
        for name, size in (("original_size", original_size), ("target_size", target_size)):
            if size is not None:
                width_, height_ = size
                getattr(request, name).CopyFrom(pb.PictureSize(width=width_, height=height_))
        if crop_top_left is not None:
            top, left = crop_top_left
            request.crop_top_left.CopyFrom(pb.CropOrigin(top=top, left=left))
        # A stream call only fails when iterated, so there is nothing to catch here.
        return Generation(self._stub.Generate(request), _convert.generate_event, self.socket)

    def generate_images(self, prompt: str, **options: Any) -> list[types.Image]:
        """Runs a job to the end and returns its images; takes the same options as generate()."""
        with self.generate(prompt, **options) as events:
            return [event for event in events if isinstance(event, types.Image)]

    def cancel(self, job_id: str) -> bool:
        """Cancels a queued or running job; its Generate stream then fails with code CANCELLED.
        An unknown id raises EaselError("NOT_FOUND", ...)."""
        return bool(self._call("Cancel", pb.CancelRequest(job_id=job_id)).cancelled)

    def tokenize(self, prompt: str, *, model: str | None = None) -> types.Tokens:
        """The prompt as `model`'s tokenizer sees it (default: the default model)."""
        return _convert.tokens(self._call("Tokenize", pb.TokenizeRequest(model=model or "", prompt=prompt)))

    # --- Models and the daemon ------------------------------------------------------------------

    def models(self) -> list[types.ModelInfo]:
        """The models the daemon knows (`easel models list`)."""
        reply = self._call("ListModels", pb.ListModelsRequest())
        return [_convert.plain(types.ModelInfo, model) for model in reply.models]

    def load(self, model: str, *, keep_alive: str | float | None = None) -> types.RunningModel:
        """Loads a model now (so the next job starts at once) and keeps it for `keep_alive`."""
        reply = self._call(
            "LoadModel", pb.LoadModelRequest(model=model, keep_alive=_convert.keep_alive_text(keep_alive))
        )
        return _convert.plain(types.RunningModel, reply.model)

    def unload(self, model: str) -> bool:
        """Unloads a model (after the job using it, if any); False when it was not loaded."""
        return bool(self._call("UnloadModel", pb.UnloadModelRequest(model=model)).unloaded)

    def running(self) -> types.Running:
        """What is resident and how much memory it takes (`easel ps`)."""
        return _convert.running(self._call("ListRunning", pb.ListRunningRequest()))

    def status(self) -> types.Status:
        """Version, device, queue and memory (`easel status`)."""
        return _convert.plain(types.Status, self._call("GetStatus", pb.StatusRequest()))

    def watch_events(self) -> Stream[types.DaemonEvent]:
        """The daemon's events (jobs, models, imports) as they happen, until closed. Iterate it in
        a thread of its own; `close()` from any thread ends it."""
        return Stream(self._stub.WatchEvents(pb.WatchRequest()), _convert.daemon_event, self.socket)
