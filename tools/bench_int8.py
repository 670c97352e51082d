"""The int8 UNet's speed for `cargo xtask bench`: the benchmark model's UNet quantized by
`tools/quantize_unet.py` (once, cached beside the model as `unet-int8/`), one evaluation at
batch 2 against the float32 UNet, each in a bare ONNX Runtime session with easel's settings.

    python tools/bench_int8.py MODEL --threads 2 --size 512 --runs 2

Prints one JSON object: {fp32: {...}, int8: {...}} with load_s, step_s and the size on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_baselines import session_options, unet_inputs


def measure(unet_dir: Path, threads: int, size: int, runs: int) -> dict:
    import onnxruntime as ort

    options = session_options(threads)
    options.enable_mem_pattern = False  # as easel opens sessions
    started = time.perf_counter()
    session = ort.InferenceSession(str(unet_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    inputs = unet_inputs(session, size, np.random.default_rng(0))
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - t)
    disk = sum(p.stat().st_size for p in unet_dir.iterdir() if p.is_file())
    return {"load_s": load, "first_s": times[0], "step_s": times[1:], "disk_bytes": disk}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--one", type=Path, help="measure this UNet folder in this process, and exit")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads, args.size, args.runs)))
        return
    int8 = args.model.parent / "unet-int8"
    if not (int8 / "model.onnx").is_file():
        print("bench_int8: quantizing the UNet (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("quantize_unet.py")), str(args.model), str(int8)],
                       check=True, stdout=sys.stderr)
    result = {}
    for name, folder in (("fp32", args.model / "unet"), ("int8", int8)):
        out = subprocess.run(
            [sys.executable, __file__, str(args.model), "--threads", str(args.threads), "--size", str(args.size),
             "--runs", str(args.runs), "--one", str(folder)],
            check=True, capture_output=True, text=True,
        )
        result[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
