"""Bare ONNX Runtime on the SDXL benchmark model, what `cargo xtask bench --sdxl` holds easel's
figures against (the same model folder, ONNX Runtime build and thread count): the sessions a
picture needs (both text encoders, the UNet, the VAE decoder) opened, the process's resident
memory then, and UNet evaluations with a guided step's inputs at SIZE² (batch 2: sample,
scalar timestep, 77 tokens of 2048-wide hidden states, pooled embeddings, six time ids).

    python tools/bench_sdxl.py MODEL --threads 2 --size 1024 --runs 2

Prints one JSON object: seconds and bytes, every run's figure.
"""

from __future__ import annotations

import os

# Before onnxruntime loads: its official builds write a device id under ~/.cache/Microsoft
# and send telemetry unless this is set (easeld sets it for itself too).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_baselines import memory_field, peak_rss, session_options

PARTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")


def resident() -> int:
    """This process's resident memory (VmRSS), in bytes."""
    return memory_field("VmRSS")


def unet_inputs(size: int, rng) -> dict:
    latent = size // 8
    return {
        "sample": rng.standard_normal((2, 4, latent, latent), dtype=np.float32),
        "timestep": np.array(981.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 2048), dtype=np.float32),
        "text_embeds": rng.standard_normal((2, 1280), dtype=np.float32),
        "time_ids": np.tile(np.array([size, size, 0, 0, size, size], dtype=np.float32), (2, 1)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime as ort

    before = resident()
    started = time.perf_counter()
    sessions = {
        part: ort.InferenceSession(str(args.model / part / "model.onnx"), session_options(args.threads),
                                   providers=["CPUExecutionProvider"])
        for part in PARTS
    }
    load = time.perf_counter() - started
    loaded = resident() - before
    unet = sessions["unet"]
    inputs = unet_inputs(args.size, np.random.default_rng(0))
    declared = {i.name for i in unet.get_inputs()}
    assert declared == set(inputs), f"the UNet takes {sorted(declared)}"
    times = []
    for _ in range(args.runs + 1):
        t = time.perf_counter()
        unet.run(None, inputs)
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "load_s": load,
        "resident_bytes": loaded,
        "first_s": times[0],
        "step_s": times[1:],
        "peak_rss_bytes": peak_rss() - before,
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    main()
