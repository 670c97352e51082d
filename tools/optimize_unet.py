"""A UNet with ONNX Runtime's attention fusion for the CPU: the transformers optimizer
(`model_type="unet"`) turns each self- and cross-attention block into one `Attention` /
`MultiHeadAttention` operator and the layer norms into `(Skip)LayerNormalization`, which the
CPU runs in fewer passes over memory. Only CPU-capable fusions are enabled (the GroupNorm,
BiasSplitGelu, BiasAdd, packed-QKV and NHWC fusions are CUDA-only).

    python tools/optimize_unet.py SOURCE_MODEL OUT_UNET_FOLDER

Writes OUT_UNET_FOLDER/{model.onnx, model.onnx.data, config.json}: put that folder in place of a
model folder's `unet/` (its inputs and outputs are unchanged). Measured on the full-size SD 1.5
UNet (`cargo xtask bench`): 5–10% faster per evaluation on two cores, outputs within float
rounding (1e-6); on the fixture, the same pictures (`tests/tests/e2e/generate.rs`).
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

import argparse
import shutil
from pathlib import Path

import numpy as np

from common import log

CUDA_ONLY = ("enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu", "enable_packed_qkv",
             "enable_packed_kv", "enable_bias_add", "enable_nhwc_conv", "enable_qordered_matmul")


def _get_num_heads(self, reshape_q, is_torch2=False):
    """onnxruntime 1.x's `FusionAttentionUnet.get_num_heads`, reading the head count with
    NumPy 2 (which no longer turns a one-element array into an int)."""
    num_heads = 0
    if is_torch2:
        parent = self.model.get_parent(reshape_q, 1)
        if parent and parent.op_type == "Concat" and len(parent.input) == 4:
            value = self.model.get_constant_value(parent.input[2])
            if isinstance(value, np.ndarray) and value.size == 1:
                num_heads = int(value.reshape(-1)[0])
    else:
        value = self.model.get_constant_value(reshape_q.input[1])
        if isinstance(value, np.ndarray) and list(value.shape) == [4]:
            num_heads = int(value[2])
    return num_heads if num_heads > 0 else self.num_heads


def optimize(source_unet: Path, out: Path) -> dict:
    """Fuses `source_unet/model.onnx` into `out/`; returns the fused operators' counts."""
    import sys

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer imports its modules both as a package and by bare name.
    for name in ("onnxruntime.transformers.fusion_attention_unet", "fusion_attention_unet"):
        if name in sys.modules:
            sys.modules[name].FusionAttentionUnet.get_num_heads = _get_num_heads
    options = FusionOptions("unet")
    for flag in CUDA_ONLY:
        if hasattr(options, flag):
            setattr(options, flag, False)
    model = optimize_model(str(source_unet / "model.onnx"), model_type="unet", num_heads=0, hidden_size=0,
                           opt_level=0, optimization_options=options, use_gpu=False)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True, all_tensors_to_one_file=True)
    if (source_unet / "config.json").is_file():
        shutil.copyfile(source_unet / "config.json", out / "config.json")
    log(f"wrote {out}: {fused}")
    return fused


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder (its unet/ is optimized)")
    parser.add_argument("out", type=Path, help="the folder to write the optimized UNet into")
    args = parser.parse_args()
    optimize(args.model / "unet", args.out)


if __name__ == "__main__":
    main()
