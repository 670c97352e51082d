"""ONNX Runtime session settings, each measured alone on the benchmark model's UNet: what
`cargo xtask bench` reports in its "Session settings" table, and how easel's choices in
`daemon/src/model/onnx.rs` were made.

Every setting runs in a fresh process (so its peak RSS is its own): create the UNet session,
one warm-up evaluation (batch 2, as a guided step), then `runs` timed evaluations.

    python tools/bench_settings.py MODEL --threads 2 --size 512 --runs 2

Prints one JSON object: setting -> {load_s, first_s, step_s: [...], peak_rss_bytes}.
"""

from __future__ import annotations

import os

# Before onnxruntime loads: its official builds write a device id under ~/.cache/Microsoft
# and send telemetry unless this is set (easeld sets it for itself too).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import argparse
import json
import sys
from pathlib import Path

from bench_baselines import in_own_process, session_options, time_unet

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--one", choices=SETTINGS, help="measure this setting in this process, and exit")
    args = parser.parse_args()
    if args.one:
        options = options_for(args.one, args.threads)
        print(json.dumps(time_unet(args.model / "unet" / "model.onnx", options, args.size, args.runs)))
        return
    result = {}
    for setting, meaning in SETTINGS.items():
        print(f"bench_settings: {setting}", file=sys.stderr, flush=True)
        result[setting] = dict(in_own_process(__file__, args, setting), meaning=meaning)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
