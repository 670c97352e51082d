"""Drives the easel Python client library (clients/python) against a real daemon.

Usage: easel_client_check.py SOCKET

Run by tests/tests/e2e/python_client.rs with the venv `cargo xtask test` makes (which installs
the package). Plain asserts, no test framework: the first failure ends the script with a
traceback; success prints one JSON line {"ok": true, ...}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

import easel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BUILTIN_MODEL = "tiny-shapes"
TINY_REQUEST: dict[str, Any] = dict(model=BUILTIN_MODEL, width=64, height=64, steps=2)
SMALL_REQUEST: dict[str, Any] = dict(TINY_REQUEST, seed=5, preview="approx", stream_latents=True)


def check_socket_lookup() -> None:
    """The default socket is found exactly as the CLI finds it."""
    saved = {name: os.environ.get(name) for name in ("EASEL_SOCKET", "XDG_RUNTIME_DIR")}
    try:
        os.environ["EASEL_SOCKET"] = "/somewhere/easeld.sock"
        os.environ["XDG_RUNTIME_DIR"] = "/run/user/1"
        assert easel.default_socket_path() == "/somewhere/easeld.sock"
        assert easel.Client().socket == "/somewhere/easeld.sock"
        assert easel.Client(socket="/explicit.sock").socket == "/explicit.sock", "an explicit socket wins"
        os.environ["EASEL_SOCKET"] = ""
        assert easel.default_socket_path() == "/run/user/1/easel/easeld.sock", "empty EASEL_SOCKET is unset"
        del os.environ["XDG_RUNTIME_DIR"]
        expected = os.path.join(tempfile.gettempdir(), f"easel-{os.geteuid()}", "easeld.sock")
        assert easel.default_socket_path() == expected, easel.default_socket_path()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_small_generation(client: easel.Client) -> tuple[bytes, list[str]]:
    """Events in order, a 4-d latent, an approx preview, a PNG. Returns the PNG and event names."""
    events = list(client.generate("a red circle", **SMALL_REQUEST))
    names = [type(event).__name__ for event in events]
    assert names[:2] == ["Queued", "Started"], names
    assert names[-2:] == ["Image", "Finished"], names
    assert set(names[2:-2]) == {"Progress"}, names
    queued, started, image, finished = events[0], events[1], events[-2], events[-1]
    assert isinstance(queued, easel.Queued) and isinstance(started, easel.Started)
    assert isinstance(image, easel.Image) and isinstance(finished, easel.Finished)
    assert queued.job_id and started.job_id == queued.job_id == finished.job_id, events
    progress = [event for event in events if isinstance(event, easel.Progress)]
    assert [p.step for p in progress] == [1, 2] and all(p.total == 2 for p in progress), progress
    for step in progress:
        assert isinstance(step.latent, np.ndarray) and step.latent.ndim == 4, step.latent
        assert step.latent.dtype in (np.float32, np.float16), step.latent.dtype
        assert step.latent.shape[0] == 1 and np.isfinite(step.latent).all(), step.latent.shape
        assert step.preview_png and step.preview_png.startswith(PNG_SIGNATURE), "an approx preview PNG"
    assert image.png.startswith(PNG_SIGNATURE), image.png[:16]
    assert (image.index, image.seed, image.width, image.height) == (0, 5, 64, 64), image
    assert "Seed: 5" in image.parameters, image.parameters
    assert finished.timings["total_ms"] >= finished.timings["denoise_ms"], finished.timings
    return image.png, names


def check_cancel(client: easel.Client) -> str:
    """Cancel by id after the first step: the stream fails with CANCELLED. Returns the message."""
    stream = client.generate("a very long job", model=BUILTIN_MODEL, width=512, height=512, steps=200, seed=1)
    try:
        for event in stream:
            if isinstance(event, easel.Progress):
                assert stream.job_id is not None
                assert client.cancel(stream.job_id) is True
                break
        for event in stream:
            assert not isinstance(event, (easel.Image, easel.Finished)), f"the job went on: {event}"
        raise AssertionError("the cancelled job's stream ended without an error")
    except easel.EaselError as error:
        assert error.code == "CANCELLED", (error.code, error.message)
        assert error.message, "the daemon says why"
        return error.message
    finally:
        stream.close()


def check_watch_events(client: easel.Client) -> dict[str, list[str]]:
    """A watcher in another thread sees a job from queued to finished, and sees a job cancelled by
    breaking out of its loop (dropping the stream hangs up, which cancels it); close() ends it.
    Returns the states seen for each of the two jobs.
    """
    watch = client.watch_events()
    seen: list[easel.DaemonEvent] = []
    failures: list[BaseException] = []

    def collect() -> None:
        try:
            for event in watch:
                seen.append(event)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)

    def states_of(job_id: str, until: str) -> list[str]:
        deadline = time.monotonic() + 30
        while True:
            states = [e.state for e in seen if isinstance(e, easel.JobEvent) and e.job_id == job_id]
            if until in states or time.monotonic() > deadline or failures:
                return states
            time.sleep(0.05)

    watcher = threading.Thread(target=collect, daemon=True)
    watcher.start()
    # The watch subscribes when the call reaches the daemon, and a job started before then is
    # missed: wait until a job is seen whole (a few tries at most).
    time.sleep(0.5)
    for _ in range(5):
        job = client.generate("a blue square", seed=7, **TINY_REQUEST)
        job_id = next(event.job_id for event in job if isinstance(event, easel.Finished))
        finished = states_of(job_id, until="finished")
        if finished[:1] == ["queued"]:
            break
    assert finished[:2] == ["queued", "started"] and finished[-1] == "finished", finished

    long_job = None
    for event in client.generate("a very long job", model=BUILTIN_MODEL, width=512, height=512, steps=200):
        if isinstance(event, easel.Queued):
            long_job = event.job_id
        if isinstance(event, easel.Progress):
            break
    assert long_job is not None
    dropped = states_of(long_job, until="cancelled")
    assert dropped[-1:] == ["cancelled"], f"breaking out of the loop cancels the job: {dropped}"

    watch.close()
    watcher.join(timeout=10)
    assert not watcher.is_alive(), "close() ends the watch"
    assert not failures, f"the watch failed: {failures!r}"
    jobs = [e for e in seen if isinstance(e, easel.JobEvent)]
    assert all(e.unix_ms > 0 and e.model for e in jobs), jobs
    return {"finished": finished, "dropped": dropped}


SDXL_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models", "sdxl-tiny")


def check_sdxl_sizes(client: easel.Client) -> str:
    """SDXL's size conditioning reaches the daemon (the PNG says so) and changes the picture;
    another family refuses it."""
    model = os.path.realpath(SDXL_FIXTURE)
    request: dict[str, Any] = dict(model=model, width=64, height=64, steps=2, seed=3)
    (plain,) = client.generate_images("a red circle", **request)
    (sized,) = client.generate_images(
        "a red circle", original_size=(768, 1024), crop_top_left=(16, 32), target_size=(384, 512), **request
    )
    assert sized.png != plain.png, "the size conditioning changed nothing"
    for text in ("Original size: 768x1024", "Crop top-left: 16,32", "Target size: 384x512"):
        assert text in sized.parameters, sized.parameters
    try:
        list(client.generate("not sdxl", original_size=(512, 512), **TINY_REQUEST))
        raise AssertionError("original_size on an SD 1.x model was accepted")
    except easel.EaselError as error:
        assert error.code == "INVALID_ARGUMENT" and "SDXL models only" in error.message, (error.code, error.message)
    return sized.parameters


REFINER_FIXTURE = os.path.join(os.path.dirname(SDXL_FIXTURE), "sdxl-refiner-tiny")


def check_refiner(client: easel.Client) -> str:
    """Base + refiner: the refiner takes over (the PNG names it, progress counts both stages,
    the picture changes); a switch out of range is refused."""
    request: dict[str, Any] = dict(model=os.path.realpath(SDXL_FIXTURE), steps=4, seed=5, sampler="euler")
    (plain,) = client.generate_images("a lighthouse", **request)
    with client.generate(
        "a lighthouse", refiner=os.path.realpath(REFINER_FIXTURE), refiner_switch=0.5, **request
    ) as events:
        seen = list(events)
    totals = {event.total for event in seen if isinstance(event, easel.Progress)}
    (refined,) = [event for event in seen if isinstance(event, easel.Image)]
    assert totals == {4}, totals
    assert refined.png != plain.png, "the refiner changed nothing"
    assert "Refiner: sdxl-refiner-tiny, Refiner switch at: 0.5" in refined.parameters, refined.parameters
    try:
        list(client.generate("x", refiner=os.path.realpath(REFINER_FIXTURE), refiner_switch=1.5, **request))
        raise AssertionError("a refiner switch of 1.5 was accepted")
    except easel.EaselError as error:
        assert error.code == "INVALID_ARGUMENT" and "refiner switch" in error.message, (error.code, error.message)
    return refined.parameters


def check_errors(client: easel.Client, socket: str) -> dict[str, str]:
    try:
        list(client.generate("bad size", **dict(TINY_REQUEST, width=13)))
        raise AssertionError("width=13 was accepted")
    except easel.EaselError as error:
        assert error.code == "INVALID_ARGUMENT", (error.code, error.message)
        assert "13" in error.message, error.message
        bad_request = error.message
    try:
        client.cancel("no-such-job")
        raise AssertionError("cancelling an unknown job succeeded")
    except easel.EaselError as error:
        assert error.code == "NOT_FOUND" and "no-such-job" in error.message, (error.code, error.message)
    missing = os.path.join(os.path.dirname(socket), "nobody-here", "easeld.sock")
    try:
        with easel.Client(missing, timeout=10) as nowhere:
            nowhere.status()
        raise AssertionError("a missing socket answered")
    except easel.DaemonNotRunningError as error:
        assert isinstance(error, easel.EaselError) and error.code == "UNAVAILABLE"
        assert missing in error.message and "easel daemon start" in error.message, error.message
        no_daemon = error.message
    try:
        list(client.generate("no tiny decoder", decoder="tiny", **TINY_REQUEST))
        raise AssertionError("the tiny decoder of a model without one was accepted")
    except easel.EaselError as error:
        assert error.code == "FAILED_PRECONDITION" and "vae_decoder_tiny" in error.message, (error.code, error.message)
    try:
        client.generate("bad decoder", decoder="huge", **TINY_REQUEST)
        raise AssertionError("decoder='huge' was accepted")
    except ValueError as error:
        assert "decoder must be one of full, tiny" in str(error), error
    return {"bad_request": bad_request, "no_daemon": no_daemon}


def main() -> None:
    socket = sys.argv[1]
    check_socket_lookup()
    with easel.Client(socket, timeout=60) as client:
        status = client.status()
        assert status.version and status.pid > 0, status
        assert status.socket == socket or os.path.samefile(status.socket, socket), status
        assert status.default_model == BUILTIN_MODEL, status

        models = client.models()
        builtin = next((m for m in models if m.name == BUILTIN_MODEL), None)
        assert builtin is not None, [m.name for m in models]
        assert builtin.source == "builtin" and builtin.family.startswith("sd1"), builtin

        first_png, event_names = check_small_generation(client)
        again = client.generate_images("a red circle", **SMALL_REQUEST)
        assert len(again) == 1 and again[0].png == first_png, "the same seed gives the same image"
        # The guidance cut-off reaches the daemon: the same seed draws another picture.
        cut = client.generate_images("a red circle", guidance_cutoff=0.0, **SMALL_REQUEST)
        assert cut[0].png != first_png and "Guidance cutoff: 0" in cut[0].parameters, cut[0].parameters

        # init_noise (a numpy array) replaces the seed's noise: two seeds, one final latent (the
        # PNGs differ only in their seed text); float16 noise travels as float16.
        noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)

        def final_latent(seed: int, init_noise: np.ndarray) -> np.ndarray:
            events = client.generate(
                "a red circle", seed=seed, init_noise=init_noise, stream_latents=True, **TINY_REQUEST
            )
            latent = [e.latent for e in events if isinstance(e, easel.Progress)][-1]
            assert latent is not None
            return latent

        assert np.array_equal(final_latent(1, noise), final_latent(2, noise)), "init_noise decides"
        assert not np.array_equal(final_latent(1, noise), final_latent(1, -noise))
        assert final_latent(1, noise.astype(np.float16)).shape == (1, 4, 8, 8)

        assert any(m.name == BUILTIN_MODEL for m in client.running().models), "resident after use"
        tokens = client.tokenize("a red circle", model=BUILTIN_MODEL)
        assert tokens.tokens and len(tokens.ids) == len(tokens.tokens) and not tokens.truncated, tokens

        sdxl_parameters = check_sdxl_sizes(client)
        refiner_parameters = check_refiner(client)
        cancelled = check_cancel(client)
        watched = check_watch_events(client)
        errors = check_errors(client, socket)
        deadline = time.monotonic() + 30
        while client.status().running_jobs or client.status().queued_jobs:
            assert time.monotonic() < deadline, f"jobs left running: {client.status()}"
            time.sleep(0.05)

    print(
        json.dumps(
            {
                "ok": True,
                "version": status.version,
                "models": [m.name for m in models],
                "events": event_names,
                "cancelled": cancelled,
                "watched": watched,
                "errors": errors,
                "sdxl": sdxl_parameters,
                "refiner": refiner_parameters,
            }
        )
    )


if __name__ == "__main__":
    main()
