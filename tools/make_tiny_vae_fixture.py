"""A tiny VAE decoder (TAESD's architecture, diffusers' `AutoencoderTiny`) with random weights,
exported to ONNX, and diffusers' own decode of it as the reference easel's `--decoder tiny` is
held to.

The decoder keeps TAESD's layout (a clamp `tanh(x / 3) · 3`, four stages of 3-3-3-1 residual
blocks with ReLU, nearest 2× upsampling between them, output scaled from 0..1 to −1..1) at 8
channels instead of 64, so the fixture weighs kilobytes. Its latent has 4 channels and its
factor is 8, like sd1-tiny's VAE, so it fits that model as its `vae_decoder_tiny/`.

Writes tests/fixtures/tiny-vae/:
  vae_decoder_tiny/{model.onnx, config.json}   the folder a model carries (input
                                               `latent_sample`, output `sample`, as optimum
                                               names a VAE decoder's)
  latents.npy     SD latents as the denoising loop leaves them (1 × 4 × 9 × 13)
  decoded.npy     diffusers: `AutoencoderTiny.decode(latents / scaling_factor).sample` in
                  PyTorch, [1, 3, 72, 104] in −1..1
  full.npy        the same latents through sd1-tiny's full VAE decoder, to show the tiny one
                  really decodes differently
  manifest.json

Usage: .venv-tools/bin/python tools/make_tiny_vae_fixture.py
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

import json

import numpy as np

from common import FIX, log, ort_session, write_json
from export_tiny_decoder import export_decoder

OUT = FIX / "tiny-vae"
FULL_MODEL = FIX / "models" / "sd1-tiny"
CHANNELS = (8, 8, 8, 8)
SHAPE = (1, 4, 9, 13)
SEED = 20261203


def build(channels=CHANNELS, seed=SEED):
    """A random-weight AutoencoderTiny with TAESD's layout at `channels` wide. The decoder's
    weights are drawn 1.5× PyTorch's default init and its last bias centred on mid-grey, so the
    random decoder's output spans the picture's range (few pixels clipped) instead of sitting
    near black."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(encoder_block_out_channels=channels, decoder_block_out_channels=channels)
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(1.5)
        last = vae.decoder.layers[-1]
        last.bias.copy_(0.5 + 0.1 * torch.randn_like(last.bias))
    return vae.eval()


def main():
    import torch

    vae = build()
    export_decoder(vae, OUT / "vae_decoder_tiny")

    latents = np.random.default_rng(SEED).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        decoded = vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample.numpy()
    assert decoded.shape == (1, 3, SHAPE[2] * 8, SHAPE[3] * 8), decoded.shape

    # The exported graph agrees with the PyTorch module it came from.
    session = ort_session(OUT / "vae_decoder_tiny" / "model.onnx", threads=1)
    onnx_out = session.run(None, {"latent_sample": latents / vae.config.scaling_factor})[0]
    onnx_vs_torch = float(np.abs(onnx_out - decoded).max())
    assert onnx_vs_torch < 1e-4, onnx_vs_torch

    # The full decoder of sd1-tiny on the same latents (it takes latents / 0.18215).
    full_config = json.loads((FULL_MODEL / "vae_decoder" / "config.json").read_text())
    full_session = ort_session(FULL_MODEL / "vae_decoder" / "model.onnx", threads=1)
    full = full_session.run(None, {"latent_sample": latents / full_config["scaling_factor"]})[0]
    tiny_vs_full = float(np.abs(full - decoded).mean())
    log(
        f"decoded {decoded.shape}: mean {decoded.mean():.3f}, std {decoded.std():.3f}, "
        f"clipped {(np.abs(decoded) > 1).mean():.1%}; |onnx - torch| max {onnx_vs_torch:.2e}; "
        f"mean |tiny - full| {tiny_vs_full:.3f}"
    )

    np.save(OUT / "latents.npy", latents)
    np.save(OUT / "decoded.npy", decoded.astype(np.float32))
    np.save(OUT / "full.npy", full.astype(np.float32))
    import diffusers

    write_json(
        OUT / "manifest.json",
        {
            "decoder": "vae_decoder_tiny",
            "decoder_block_out_channels": list(CHANNELS),
            "latent_shape": list(SHAPE),
            "seed": SEED,
            "max_abs_onnx_vs_torch": onnx_vs_torch,
            "mean_abs_tiny_vs_full": tiny_vs_full,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        },
    )
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
