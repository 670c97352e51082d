"""What `cargo xtask bench` compares easel against, on the same ONNX model folder, the same
ONNX Runtime build (the `onnxruntime` wheel easel's library comes from) and thread count:

  - bare ONNX Runtime sessions: the time to create the three sessions a picture needs, one
    UNet evaluation with the inputs a guided step feeds it (batch 2), one VAE decode;
  - optimum's `ORTStableDiffusionPipeline`: load, and request to PIL image (PNDM, guided).

    python tools/bench_baselines.py MODEL --threads 2 --size 512 --steps 4 --runs 3

Prints one JSON object (seconds; every run's figure, so the caller takes medians).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def evict(folder: Path):
    """Drops every file under `folder` from the page cache (a cold disk, without root)."""
    import os

    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm(folder: Path):
    """Reads every file under `folder` once, so that "page cache warm" figures are."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                while file.read(1 << 24):
                    pass


def bare_load(model: Path, threads: int) -> float:
    """Seconds to create the three sessions a picture needs."""
    import onnxruntime as ort

    started = time.perf_counter()
    for part in ("text_encoder", "unet", "vae_decoder"):
        ort.InferenceSession(str(model / part / "model.onnx"), session_options(threads), providers=["CPUExecutionProvider"])
    return time.perf_counter() - started


def bare_sessions(model: Path, threads: int, size: int, runs: int) -> dict:
    import onnxruntime as ort

    started = time.perf_counter()
    sessions = {
        part: ort.InferenceSession(str(model / part / "model.onnx"), session_options(threads), providers=["CPUExecutionProvider"])
        for part in ("text_encoder", "unet", "vae_decoder")
    }
    load = time.perf_counter() - started
    rng = np.random.default_rng(0)
    latent = size // 8
    unet = sessions["unet"]
    inputs = {}
    for spec in unet.get_inputs():
        if spec.name == "sample":
            inputs[spec.name] = rng.standard_normal((2, 4, latent, latent), dtype=np.float32)
        elif spec.name == "timestep":
            # optimum exports a scalar float; other exports take one per batch item.
            dtype = np.int64 if "int64" in spec.type else np.float32
            shape = () if not spec.shape else (1 if spec.shape[0] == 1 else 2,)
            inputs[spec.name] = np.full(shape, 981, dtype=dtype)
        elif spec.name == "encoder_hidden_states":
            inputs[spec.name] = rng.standard_normal((2, 77, 768), dtype=np.float32)
    step = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        unet.run(None, inputs)
        step.append(time.perf_counter() - t)
    decoder = sessions["vae_decoder"]
    name = decoder.get_inputs()[0].name
    z = rng.standard_normal((1, 4, latent, latent), dtype=np.float32)
    decode = []
    for _ in range(runs):
        t = time.perf_counter()
        decoder.run(None, {name: z})
        decode.append(time.perf_counter() - t)
    # The first UNet run pays for ONNX Runtime's lazy setup: reported apart.
    return {"load_s": load, "unet_first_s": step[0], "unet_step_s": step[1:], "vae_decode_s": decode}


def optimum_pipeline(model: Path, threads: int, size: int, steps: int, runs: int) -> dict:
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    started = time.perf_counter()
    pipe = ORTStableDiffusionPipeline.from_pretrained(
        str(model), provider="CPUExecutionProvider", session_options=session_options(threads)
    )
    load = time.perf_counter() - started
    total = []
    for run in range(runs):
        t = time.perf_counter()
        pipe("a red circle", height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(run))
        total.append(time.perf_counter() - t)
    return {"load_s": load, "total_s": total}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, help="ONNX Runtime's intra-op threads (required to measure)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-only", action="store_true", help="only create the bare sessions")
    parser.add_argument("--evict", action="store_true", help="drop MODEL's files from the page cache, and exit")
    parser.add_argument("--warm", action="store_true", help="read MODEL's files into the page cache, and exit")
    args = parser.parse_args()
    if args.evict:
        evict(args.model)
        return
    if args.warm:
        warm(args.model)
        return
    if args.threads is None:
        parser.error("--threads is required to measure")
    if args.load_only:
        print(json.dumps({"bare_load_s": bare_load(args.model, args.threads)}))
        return
    import onnxruntime
    import optimum.version

    result = {
        "onnxruntime": onnxruntime.__version__,
        "optimum": optimum.version.__version__,
        "bare": bare_sessions(args.model, args.threads, args.size, args.runs),
        "optimum_pipeline": optimum_pipeline(args.model, args.threads, args.size, args.steps, args.runs),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
