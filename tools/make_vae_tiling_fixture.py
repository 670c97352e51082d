"""The reference for easel's tiled VAE decode: diffusers' own `AutoencoderKL.tiled_decode`,
run on the sd1-tiny fixture's ONNX decoder.

diffusers decides the tiles, blends and crops; only the decoder call itself is the committed
ONNX graph (through onnxruntime), so the reference and easel decode every tile with the same
graph and any difference is in the tiling. The optimum export's `vae_decoder` already holds
`post_quant_conv`, so diffusers' is replaced by the identity.

Writes tests/fixtures/vae-tiling/: latents.npy (scaled latents, what the decoder takes),
decoded.npy (diffusers' tiled output, [1, 3, H, W] in -1..1), whole.npy (the same latents
decoded in one piece, to show tiling changes the picture) and manifest.json.

Usage: .venv-tools/bin/python tools/make_vae_tiling_fixture.py
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

import json

import numpy as np

from common import FIX, log, ort_session, write_json

MODEL = FIX / "models" / "sd1-tiny"
OUT = FIX / "vae-tiling"
# 13 × 21 latent cells: three rows and four columns of tiles (sd1-tiny's VAE tiles are 8 cells,
# 64 px), ragged at the bottom and right, so every blend and crop case occurs.
SHAPE = (1, 4, 13, 21)
SEED = 20261202


def onnx_decoder():
    """The committed vae_decoder graph as a module, called the way diffusers calls
    `self.decoder`."""
    import torch

    class OnnxDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.session = ort_session(MODEL / "vae_decoder" / "model.onnx", threads=1)
            self.input = self.session.get_inputs()[0].name

        def forward(self, tile):
            out = self.session.run(None, {self.input: tile.detach().numpy().astype(np.float32)})[0]
            return torch.from_numpy(out)

    return OnnxDecoder()


def main():
    import torch
    from diffusers import AutoencoderKL

    config = json.loads((MODEL / "vae_decoder" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = AutoencoderKL.from_config(config)
    vae.post_quant_conv = torch.nn.Identity()
    decoder = onnx_decoder()
    vae.decoder = decoder
    vae.enable_tiling()
    log(
        f"tiles: latent {vae.tile_latent_min_size}, sample {vae.tile_sample_min_size}, "
        f"overlap {vae.tile_overlap_factor}"
    )

    latents = np.random.default_rng(SEED).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        tiled = vae.tiled_decode(torch.from_numpy(latents.copy())).sample.numpy()
    whole = decoder(torch.from_numpy(latents.copy())).numpy()
    assert tiled.shape == whole.shape == (1, 3, SHAPE[2] * 8, SHAPE[3] * 8), (tiled.shape, whole.shape)
    differs = float(np.abs(tiled - whole).mean())
    log(f"tiled {tiled.shape}; mean |tiled - whole| = {differs:.4f} (tiling changes the picture)")

    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "latents.npy", latents)
    np.save(OUT / "decoded.npy", tiled.astype(np.float32))
    np.save(OUT / "whole.npy", whole.astype(np.float32))
    import diffusers

    write_json(
        OUT / "manifest.json",
        {
            "model": "sd1-tiny",
            "latent_shape": list(SHAPE),
            "seed": SEED,
            "tile_latent_min_size": vae.tile_latent_min_size,
            "tile_sample_min_size": vae.tile_sample_min_size,
            "tile_overlap_factor": vae.tile_overlap_factor,
            "mean_abs_tiled_vs_whole": differs,
            "diffusers": diffusers.__version__,
        },
    )
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
