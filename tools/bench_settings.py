"""ONNX Runtime session settings, each measured alone on the benchmark model's UNet: what
`cargo xtask bench` reports in its "Session settings" table, and how easel's choices in
`daemon/src/model/onnx.rs` were made.

Every setting runs in a fresh process (so its peak RSS is its own): create the UNet session,
one warm-up evaluation (batch 2, as a guided step), then `runs` timed evaluations.

    python tools/bench_settings.py MODEL --threads 2 --size 512 --runs 2

Prints one JSON object: setting -> {load_s, first_s, step_s: [...], peak_rss_bytes}.
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

# name -> (what it changes, how). "default" is ONNX Runtime's defaults (what easel used before
# the memory-pattern change); "easel" is what easel sets now.
SETTINGS = {
    "default": "ONNX Runtime's defaults: arena on, memory pattern on, all graph optimizations, spinning",
    "easel": "what easel sets: memory pattern off (arena on)",
    "arena_off": "CPU memory arena off",
    "arena_and_pattern_off": "arena and memory pattern off",
    "no_spinning": "intra-op threads do not spin while waiting (session.intra_op.allow_spinning 0)",
    "optimize_basic": "graph optimizations: basic only (no layout transforms, fewer fusions)",
    "optimize_extended": "graph optimizations: extended (no NCHWc layout transform)",
    "optimize_none": "graph optimizations off: the load time without optimizing, the step without them",
}


def options_for(setting: str, threads: int):
    import onnxruntime as ort

    options = session_options(threads)
    if setting in ("easel", "arena_and_pattern_off"):
        options.enable_mem_pattern = False
    if setting in ("arena_off", "arena_and_pattern_off"):
        options.enable_cpu_mem_arena = False
    if setting == "no_spinning":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    levels = {
        "optimize_basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "optimize_extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "optimize_none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if setting in levels:
        options.graph_optimization_level = levels[setting]
    return options


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_one(model: Path, setting: str, threads: int, size: int, runs: int) -> dict:
    import onnxruntime as ort

    started = time.perf_counter()
    unet = ort.InferenceSession(str(model / "unet" / "model.onnx"), options_for(setting, threads),
                                providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    inputs = unet_inputs(unet, size, np.random.default_rng(0))
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        unet.run(None, inputs)
        times.append(time.perf_counter() - t)
    return {"load_s": load, "first_s": times[0], "step_s": times[1:], "peak_rss_bytes": peak_rss()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--one", choices=SETTINGS, help="measure this setting in this process, and exit")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.model, args.one, args.threads, args.size, args.runs)))
        return
    result = {}
    for setting, meaning in SETTINGS.items():
        print(f"bench_settings: {setting}", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, str(args.model), "--threads", str(args.threads), "--size", str(args.size),
             "--runs", str(args.runs), "--one", setting],
            check=True, capture_output=True, text=True,
        )
        result[setting] = dict(json.loads(out.stdout.strip().splitlines()[-1]), meaning=meaning)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
