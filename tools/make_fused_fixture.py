"""sd1-tiny's UNet with ONNX Runtime's CPU attention fusion (`tools/optimize_unet.py`), for the
test that holds it to diffusers' reference pictures (`tests/tests/e2e/generate.rs`).

    .venv-tools/bin/python tools/make_fused_fixture.py      # a few seconds

Writes tests/fixtures/fused/sd1-tiny-unet/{model.onnx, model.onnx.data, config.json}: the tests put
it in place of a copy of sd1-tiny's unet/.
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

from common import FIX
from optimize_unet import optimize


def main():
    fused = optimize(FIX / "models" / "sd1-tiny" / "unet", FIX / "fused" / "sd1-tiny-unet")
    assert fused.get("MultiHeadAttention", 0) + fused.get("Attention", 0) > 0, fused


if __name__ == "__main__":
    main()
