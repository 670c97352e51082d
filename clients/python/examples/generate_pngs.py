"""Generates pictures with a running easel daemon and saves them as PNG files.

    python generate_pngs.py "a lighthouse at dusk" --count 2 --steps 20 --seed 1 --out pictures/

A starting point to copy into a plugin: it shows the event stream (progress, then images),
the daemon's defaults (leave an option out to get them) and error handling. Needs only
`pip install ./clients/python` (from an easel checkout) and a daemon (`easel daemon start`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import easel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--model", help="a model name or folder (default: the daemon's default model)")
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg", type=float, help="guidance scale")
    parser.add_argument("--sampler")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."), help="folder for the PNGs")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with easel.Client() as client:
            events = client.generate(
                args.prompt,
                model=args.model,
                negative_prompt=args.negative,
                width=args.width,
                height=args.height,
                steps=args.steps,
                guidance_scale=args.cfg,
                sampler=args.sampler,
                seed=args.seed,
                count=args.count,
            )
            # Ctrl-C leaves the with block, which hangs up: the daemon cancels the job.
            with events:
                for event in events:
                    if isinstance(event, easel.Queued) and event.position > 0:
                        print(f"queued behind {event.position} job(s)", file=sys.stderr)
                    elif isinstance(event, easel.Progress):
                        print(f"image {event.image_index + 1}: step {event.step}/{event.total}", file=sys.stderr)
                    elif isinstance(event, easel.Image):
                        path = args.out / f"easel-{event.seed}-{event.index}.png"
                        path.write_bytes(event.png)
                        print(path)
                    elif isinstance(event, easel.Finished):
                        print(f"done in {event.timings['total_ms']} ms", file=sys.stderr)
    except easel.EaselError as error:
        # The daemon's messages are written for people: show them as they are.
        print(f"easel: {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
