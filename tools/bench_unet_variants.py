"""Variants of the UNet for `cargo xtask bench`: the benchmark model's UNet with ONNX Runtime's
CPU attention fusion (`tools/optimize_unet.py`) and quantized to int8 (`tools/quantize_unet.py`),
each made once and cached beside the model (`unet-fused/`, `unet-int8/`); one evaluation at
batch 2 of each against the float32 UNet, in bare ONNX Runtime sessions with easel's settings,
each in its own process.

    python tools/bench_unet_variants.py MODEL --threads 2 --size 512 --runs 2

Prints one JSON object: {fp32: {...}, fused: {...}, int8: {...}} with load_s, step_s and the
size on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_baselines import in_own_process, session_options, time_unet


def measure(unet_dir: Path, threads: int, size: int, runs: int) -> dict:
    options = session_options(threads)
    options.enable_mem_pattern = False  # as easel opens sessions
    disk = sum(p.stat().st_size for p in unet_dir.iterdir() if p.is_file())
    return dict(time_unet(unet_dir / "model.onnx", options, size, runs), disk_bytes=disk)


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
    variants = {"fp32": args.model / "unet"}
    for name, script in (("fused", "optimize_unet.py"), ("int8", "quantize_unet.py")):
        folder = args.model.parent / f"unet-{name}"
        if not (folder / "model.onnx").is_file():
            print(f"bench_unet_variants: making the {name} UNet (once)", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, str(Path(__file__).with_name(script)), str(args.model), str(folder)],
                           check=True, stdout=sys.stderr)
        variants[name] = folder
    result = {}
    for name, folder in variants.items():
        result[name] = in_own_process(__file__, args, str(folder))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
