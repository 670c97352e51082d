"""The built-in model's UNet quantized to int8 (`tools/quantize_unet.py`), for the test that
holds it to the built-in model's quality grid (`tests/tests/e2e/quality.rs`).

    .venv-tools/bin/python tools/make_int8_fixture.py      # a few seconds

Writes tests/fixtures/int8/tiny-shapes-unet/{model.onnx, config.json}: the tests put it in place
of a copy of models/tiny-shapes/unet/.
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

from common import FIX, ROOT
from quantize_unet import quantize


def main():
    quantize(ROOT / "models" / "tiny-shapes" / "unet", FIX / "int8" / "tiny-shapes-unet")


if __name__ == "__main__":
    main()
