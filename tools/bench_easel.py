"""easel's side of `cargo xtask bench`: requests to a running daemon through easel's Python
client (gRPC on the socket, as plugins talk to it), timed from here.

    python tools/bench_easel.py SOCKET MODEL --size 512 --steps 4 --runs 3

MODEL is the model folder (an absolute path). The first request loads it (its `load_ms` is
the daemon's load time); then `runs` requests without and with streaming (latents and approx
previews on every step). Prints one JSON object: seconds, every run's figure.
"""

from __future__ import annotations

import argparse
import json
import time

import easel


def one_request(client: easel.Client, model: str, size: int, steps: int, seed: int, streaming: bool) -> dict:
    """Request to PNG bytes: wall time, the daemon's own timings, the per-step times (from the
    Progress events' elapsed_ms) and the time from the request to the first step's start."""
    started = time.perf_counter()
    options = dict(stream_latents=True, preview="approx") if streaming else {}
    elapsed = []
    load_ms = 0
    finished = None
    pngs = 0
    for event in client.generate("a red circle on a blue background", model=model, width=size, height=size,
                                 steps=steps, sampler="pndm", guidance_scale=7.5, seed=seed, **options):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--first-only", action="store_true", help="only the first (loading) request")
    args = parser.parse_args()
    with easel.Client(args.socket) as client:
        first = one_request(client, args.model, args.size, args.steps, 0, streaming=False)
        result = {"first": first}
        if not args.first_only:
            result["plain"] = [one_request(client, args.model, args.size, args.steps, run + 1, False) for run in range(args.runs)]
            result["streaming"] = [one_request(client, args.model, args.size, args.steps, run + 1, True) for run in range(args.runs)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
