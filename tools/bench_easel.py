"""easel's side of `cargo xtask bench`: requests to a running daemon through easel's Python
client (gRPC on the socket, as plugins talk to it), timed from here.

    python tools/bench_easel.py SOCKET MODEL --size 512 --steps 4 --runs 3
    python tools/bench_easel.py SOCKET MODEL --size 1024 --steps 2 --runs 2 --plain-only --sampler euler

MODEL is the model folder (an absolute path). The first request loads it (its `load_ms` is
the daemon's load time); then `runs` requests each: plain; streaming (latents and approx
previews on every step); with the tiny decoder; with guidance cut off after half the steps;
(each plain run's prompt is new to the daemon; the other series repeat those prompts)
and one step without guidance with the tiny decoder (a one-step model's time to a picture).
Last, how much the guidance cut-off changes pictures, on the built-in model (trained weights,
unlike the benchmark model's random ones). Prints one JSON object: seconds, every run's figure.
"""

from __future__ import annotations

import argparse
import json
import time

import easel


PROMPT = "a red circle on a blue background"


def one_request(client: easel.Client, model: str, size: int, steps: int, seed: int, streaming: bool = False,
                prompt: str = PROMPT, **options) -> dict:
    """Request to PNG bytes: wall time, the daemon's own timings, the per-step times (from the
    Progress events' elapsed_ms) and the time from the request to the first step's start.
    `options`: more of `Client.generate`'s (they override the defaults below)."""
    started = time.perf_counter()
    if streaming:
        options = dict(options, stream_latents=True, preview="approx")
    request = dict(sampler="pndm", guidance_scale=7.5)
    request.update(options)
    elapsed = []
    load_ms = 0
    finished = None
    pngs = 0
    for event in client.generate(prompt, model=model, width=size, height=size, steps=steps, seed=seed, **request):
        if isinstance(event, easel.Started):
            load_ms = event.load_ms
        elif isinstance(event, easel.Progress):
            elapsed.append(event.elapsed_ms / 1000)
        elif isinstance(event, easel.Image):
            pngs += len(event.png)
        elif isinstance(event, easel.Finished):
            finished = event.timings
    wall = time.perf_counter() - started
    steps_s = [b - a for a, b in zip([0.0] + elapsed, elapsed)]
    timings = {k.removesuffix("_ms") + "_s": v / 1000 for k, v in (finished or {}).items()}
    return {
        "wall_s": wall,
        "load_s": load_ms / 1000,
        "step_s": steps_s,
        "timings_s": timings,
        # Before the first UNet call: waiting in the queue and encoding the prompts.
        "to_first_step_s": timings.get("queue_s", 0) + timings.get("encode_s", 0),
        "png_bytes": pngs,
    }


def cutoff_difference(client: easel.Client, cutoff: float, seeds: int = 4) -> dict:
    """Mean and max absolute pixel difference (0-255) between pictures of the built-in model with
    and without the guidance cut-off (20 Euler steps, guidance 7.5, its native size)."""
    import io

    import numpy as np
    from PIL import Image

    def picture(seed: int, **options) -> np.ndarray:
        (image,) = client.generate_images("a red circle on a blue background", model="tiny-shapes", steps=20,
                                          sampler="euler", guidance_scale=7.5, seed=seed, **options)
        return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB")).astype(np.float64)

    diffs = [np.abs(picture(seed) - picture(seed, guidance_cutoff=cutoff)) for seed in range(seeds)]
    return {"cutoff": cutoff, "mean": float(np.mean([d.mean() for d in diffs])),
            "max": float(max(d.max() for d in diffs)), "pictures": seeds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--first-only", action="store_true", help="only the first (loading) request")
    parser.add_argument("--plain-only", action="store_true", help="the first request and the plain series only")
    parser.add_argument("--sampler", default="pndm", help="the sampler of every request (default: pndm)")
    args = parser.parse_args()
    with easel.Client(args.socket) as client:
        first = one_request(client, args.model, args.size, args.steps, 0, streaming=False, sampler=args.sampler)
        result = {"first": first}
        if not args.first_only:
            # Run r of every series has the prompt of the plain series' run r: new to the daemon
            # there (a text encoder run), seen before in the other series (the embedding cache).
            def runs(steps=args.steps, **options):
                options = dict(dict(sampler=args.sampler), **options)
                return [one_request(client, args.model, args.size, steps, run + 1, prompt=f"{PROMPT}, take {run + 1}",
                                    **options)
                        for run in range(args.runs)]

            result["plain"] = runs()
            if args.plain_only:
                print(json.dumps(result))
                return
            result["streaming"] = runs(streaming=True)
            result["tiny"] = runs(decoder="tiny")
            result["cutoff"] = runs(guidance_cutoff=0.5)
            result["one_step"] = runs(steps=1, guidance_scale=1.0, sampler="euler", decoder="tiny")
            result["cutoff_difference"] = cutoff_difference(client, 0.5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
