"""An int8 UNet: ONNX Runtime's dynamic quantization of a model's `unet/model.onnx` (weights
stored as int8 per output channel, activations quantized on the fly; MatMul and Conv become
MatMulInteger / ConvInteger, which use VNNI on CPUs that have it).

    python tools/quantize_unet.py SOURCE_MODEL OUT_UNET_FOLDER

Writes OUT_UNET_FOLDER/{model.onnx[, model.onnx_data], config.json}: put that folder in place of
a model folder's `unet/` (easel reads the UNet's inputs from the graph; they stay float32).
What it costs in quality and gains in speed is measured by `cargo xtask bench` (speed, full-size
UNet) and `tests/tests/e2e/quality.rs` (the built-in model's grid with its int8 UNet,
`tests/fixtures/int8/`, made by `tools/make_int8_fixture.py`).
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

import argparse
import shutil
import tempfile
from pathlib import Path

from common import log


def quantize(source_unet: Path, out: Path):
    """Dynamic int8 quantization of `source_unet` (a folder with model.onnx) into `out`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    graph = source_unet / "model.onnx"
    large = sum(p.stat().st_size for p in source_unet.iterdir() if p.is_file()) > 1_800_000_000
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        # The quantizer edits the graph in place: a copy keeps the source untouched.
        staged = Path(work) / "model.onnx"
        model = onnx.load(str(graph), load_external_data=True)
        onnx.save(model, str(staged), save_as_external_data=large, location="model.onnx_data" if large else None)
        del model
        quantize_dynamic(
            staged,
            out / "model.onnx",
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=large,
        )
    if (source_unet / "config.json").is_file():
        shutil.copyfile(source_unet / "config.json", out / "config.json")
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    log(f"wrote {out} ({size / 1e6:.1f} MB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder (its unet/ is quantized)")
    parser.add_argument("out", type=Path, help="the folder to write the int8 UNet into")
    args = parser.parse_args()
    quantize(args.model / "unet", args.out)


if __name__ == "__main__":
    main()
