"""What `cargo xtask bench` compares easel against, on the same ONNX model folder, the same
ONNX Runtime build (the `onnxruntime` wheel easel's library comes from) and thread count:

  - bare ONNX Runtime sessions: the time to create the three sessions a picture needs, one
    UNet evaluation with the inputs a guided step feeds it (batch 2), one VAE decode, one tiny
    VAE decode (TAESD, when the folder has `vae_decoder_tiny/`), one prompt through the text
    encoder;
  - optimum's `ORTStableDiffusionPipeline`: load, and request to PIL image (PNDM, guided).

    python tools/bench_baselines.py MODEL --threads 2 --size 512 --steps 4 --runs 3

Prints one JSON object (seconds; every run's figure, so the caller takes medians).
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


def open_sessions(model: Path, threads: int) -> tuple[dict, float]:
    """The three sessions a picture needs (text encoder, UNet, VAE decoder), and the seconds
    it took to create them."""
    import onnxruntime as ort

    started = time.perf_counter()
    sessions = {
        part: ort.InferenceSession(str(model / part / "model.onnx"), session_options(threads), providers=["CPUExecutionProvider"])
        for part in ("text_encoder", "unet", "vae_decoder")
    }
    return sessions, time.perf_counter() - started


def unet_inputs(unet, size: int, rng) -> dict:
    """What a guided step feeds the UNet: a batch of 2 latents, the timestep, 77 tokens each."""
    latent = size // 8
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
    return inputs


def time_unet(graph: Path, options, size: int, runs: int) -> dict:
    """Creates a session for the UNet `graph` with `options`, then one warm-up evaluation and
    `runs` timed ones with a guided step's inputs (batch 2). Seconds, and the process's peak RSS."""
    import onnxruntime as ort

    started = time.perf_counter()
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    inputs = unet_inputs(session, size, np.random.default_rng(0))
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - t)
    return {"load_s": load, "first_s": times[0], "step_s": times[1:], "peak_rss_bytes": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM), in bytes."""
    return memory_field("VmHWM")


def memory_field(name: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, …), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def in_own_process(script: str, args, one: str) -> dict:
    """Runs `script` again with the caller's MODEL, --threads, --size and --runs plus `--one ONE`
    (so each measurement has a process, and a peak RSS, of its own); its last line's JSON."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, script, str(args.model), "--threads", str(args.threads), "--size", str(args.size),
         "--runs", str(args.runs), "--one", one],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def node_flops(op: str, inputs: list, outputs: list) -> float:
    """Multiply-adds × 2 of the operators that do the arithmetic (convolutions, matrix
    products), from the shapes ONNX Runtime's profile records; 0 for the rest."""
    if not outputs or not inputs:
        return 0.0
    out = outputs[0]
    if op in ("Conv", "FusedConv", "NhwcFusedConv", "NchwcConv") and len(inputs) > 1 and len(inputs[1]) == 4:
        _, per_group, kh, kw = inputs[1]
        return 2.0 * float(np.prod(out)) * per_group * kh * kw
    if op in ("MatMul", "FusedMatMul", "Gemm") and len(inputs) > 1 and inputs[0]:
        # The shared dimension is the first input's last (no transposed Gemm in these graphs).
        return 2.0 * float(np.prod(out)) * inputs[0][-1]
    return 0.0


def profile_step(model: Path, threads: int, size: int) -> dict:
    """One UNet evaluation under ONNX Runtime's profiler: time per operator type, and the
    step's arithmetic (GFLOP) counted from the recorded shapes."""
    import tempfile

    import onnxruntime as ort

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "unet")
    unet = ort.InferenceSession(str(model / "unet" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = unet_inputs(unet, size, np.random.default_rng(0))
    unet.run(None, inputs)  # the first run sets things up; the second is the one read
    unet.run(None, inputs)
    events = json.loads(Path(unet.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]
    begin, end = last["ts"], last["ts"] + last["dur"]
    by_op: dict[str, float] = {}
    flops = 0.0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not begin <= event["ts"] <= end:
            continue
        args = event.get("args", {})
        op = args.get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1e6
        shapes = lambda key: [next(iter(d.values())) for d in args.get(key, []) if d]  # noqa: E731
        flops += node_flops(op, shapes("input_type_shape"), shapes("output_type_shape"))
    return {"step_s": last["dur"] / 1e6, "by_op_s": by_op, "gflop": flops / 1e9}


def matmul_peak(threads: int) -> float:
    """What these cores do at best through ONNX Runtime in fp32: GFLOP/s of a 2048³ MatMul
    (the kind of kernel a UNet step spends its time in), best of a few runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = 2048
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        session.run(None, {"a": a, "b": a})
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def bare_sessions(model: Path, threads: int, size: int, runs: int) -> dict:
    sessions, load = open_sessions(model, threads)
    rng = np.random.default_rng(0)
    latent = size // 8
    unet = sessions["unet"]
    inputs = unet_inputs(unet, size, rng)
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
    tiny_decode = []
    tiny_path = model / "vae_decoder_tiny" / "model.onnx"
    if tiny_path.is_file():
        import onnxruntime as ort

        tiny = ort.InferenceSession(str(tiny_path), session_options(threads), providers=["CPUExecutionProvider"])
        tiny_name = tiny.get_inputs()[0].name
        for _ in range(runs + 1):
            t = time.perf_counter()
            tiny.run(None, {tiny_name: z})
            tiny_decode.append(time.perf_counter() - t)
        tiny_decode = tiny_decode[1:]
    # One prompt through the text encoder (77 tokens, batch 1): what a new prompt costs before
    # the first UNet call; the empty negative prompt is a repeat, served from easel's cache.
    encoder = sessions["text_encoder"]
    ids = encoder.get_inputs()[0]
    tokens = np.full((1, 77), 49407, dtype=np.int64 if "int64" in ids.type else np.int32)
    tokens[0, :6] = [49406, 320, 736, 7117, 525, 49407]
    encode = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        encoder.run(None, {ids.name: tokens})
        encode.append(time.perf_counter() - t)
    # The first UNet run pays for ONNX Runtime's lazy setup: reported apart.
    return {"load_s": load, "unet_first_s": step[0], "unet_step_s": step[1:], "vae_decode_s": decode,
            "tiny_decode_s": tiny_decode, "text_encode_s": encode[1:]}


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
        print(json.dumps({"bare_load_s": open_sessions(args.model, args.threads)[1]}))
        return
    import onnxruntime
    import optimum.version

    result = {
        "onnxruntime": onnxruntime.__version__,
        "optimum": optimum.version.__version__,
        "bare": bare_sessions(args.model, args.threads, args.size, args.runs),
        "optimum_pipeline": optimum_pipeline(args.model, args.threads, args.size, args.steps, args.runs),
        "profile": profile_step(args.model, args.threads, args.size),
        "matmul_peak_gflops": matmul_peak(args.threads),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
