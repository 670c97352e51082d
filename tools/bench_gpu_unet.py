"""Bare ONNX Runtime's time per UNet evaluation on a GPU, the baseline of issue 14's GPU bench
(DEVELOPERS.md): a guided step's inputs (batch 2) through the model folder's UNet with the
CUDA execution provider, three ways:

  - plain: numpy in, numpy out (every input crosses to the device and back, each step);
  - iobinding: the inputs bound once in device memory, the output left there (what easel's
    loop keeps on the device);
  - cuda_graph: the same, with ONNX Runtime's CUDA graph capture (fixed shapes and addresses:
    the first run records, the next ones replay).

Needs numpy and an onnxruntime build with the provider (onnxruntime-gpu; on the CPU build,
`--provider cpu` runs the first two as a check of the script itself). fp16 exports get fp16
inputs.

    python tools/bench_gpu_unet.py MODEL --provider cuda --size 512 --runs 20

Prints one JSON object: milliseconds per evaluation for each way (every run, after warm-ups).
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


def unet_inputs(session, size: int, rng) -> dict:
    """A guided step's inputs: 2 latents, the timestep, 77 tokens each, in the graph's dtypes."""
    latent = size // 8
    inputs = {}
    for spec in session.get_inputs():
        dtype = np.float16 if "float16" in spec.type else np.int64 if "int64" in spec.type else np.float32
        if spec.name == "sample":
            channels = spec.shape[1] if isinstance(spec.shape[1], int) else 4
            inputs[spec.name] = rng.standard_normal((2, channels, latent, latent)).astype(dtype)
        elif spec.name == "timestep":
            shape = () if not spec.shape else (1 if spec.shape[0] == 1 else 2,)
            inputs[spec.name] = np.full(shape, 981, dtype=dtype)
        elif spec.name == "encoder_hidden_states":
            width = spec.shape[2] if isinstance(spec.shape[2], int) else 768
            inputs[spec.name] = rng.standard_normal((2, 77, width)).astype(dtype)
        else:
            raise SystemExit(f"the UNet has an input this script does not know: {spec.name} (SD 1.5-shaped models only)")
    return inputs


def providers(kind: str, cuda_graph: bool):
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    options = {"device_id": 0}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", options)]


def timed(run, warmups: int, runs: int) -> list[float]:
    for _ in range(warmups):
        run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def main():
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model folder in optimum's layout")
    parser.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=3)
    args = parser.parse_args()
    graph = str(args.model / "unet" / "model.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    device = "cuda" if args.provider == "cuda" else "cpu"
    result = {"onnxruntime": ort.__version__, "provider": args.provider, "size": args.size}

    started = time.perf_counter()
    session = ort.InferenceSession(graph, options, providers=providers(args.provider, False))
    result["load_s"] = time.perf_counter() - started
    if args.provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise SystemExit("the CUDA provider did not load (see ONNX Runtime's messages above)")
    inputs = unet_inputs(session, args.size, np.random.default_rng(0))
    result["plain_ms"] = timed(lambda: session.run(None, inputs), args.warmups, args.runs)

    def bound(session):
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
        output = session.get_outputs()[0]
        shape = inputs["sample"].shape
        dtype = np.float16 if "float16" in output.type else np.float32
        binding.bind_ortvalue_output(output.name, ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0))
        return binding

    binding = bound(session)
    result["iobinding_ms"] = timed(lambda: session.run_with_iobinding(binding), args.warmups, args.runs)
    if args.provider == "cuda":
        graphed = ort.InferenceSession(graph, options, providers=providers("cuda", True))
        graph_binding = bound(graphed)
        result["cuda_graph_ms"] = timed(lambda: graphed.run_with_iobinding(graph_binding), args.warmups, args.runs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
