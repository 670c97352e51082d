"""Exports a tiny VAE decoder (TAESD: diffusers' `AutoencoderTiny`) to ONNX as a model's
`vae_decoder_tiny/`, the folder easel's `--decoder tiny` and cheap full previews use.

    python tools/export_tiny_decoder.py SOURCE MODEL      # SOURCE: a diffusers AutoencoderTiny
                                                          # folder (e.g. a download of
                                                          # madebyollin/taesd for SD 1.x/2.x)
    python tools/export_tiny_decoder.py --random MODEL    # TAESD's architecture, random weights
                                                          # (what `cargo xtask bench` times)

Writes MODEL/vae_decoder_tiny/{model.onnx, config.json}: the decoder alone (input
`latent_sample` [B, 4, h, w], output `sample` [B, 3, 8h, 8w] in -1..1, batch and size dynamic)
and the AutoencoderTiny config beside it. Then re-import the model (`easel models import
MODEL`), or, for a model already installed, put the folder into its store folder. easel checks
at load that the decoder's latent channels and factor match the model's VAE: use TAESD for
SD 1.x/2.x and TAESDXL for SDXL.
"""

from __future__ import annotations

import common  # noqa: F401  (offline environment first)

import argparse
import shutil
from pathlib import Path

from common import log, write_json


def export_decoder(vae, folder: Path):
    """The decoder of `vae` (an AutoencoderTiny) as an ONNX graph (`latent_sample` → `sample`,
    batch and size dynamic) plus its config, in `folder` (replaced)."""
    import diffusers
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, latent_sample):
            return self.decoder(latent_sample)

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    example = torch.zeros(1, vae.config.latent_channels, 8, 8)
    with torch.no_grad():
        torch.onnx.export(
            Decoder(vae.decoder.eval()),
            (example,),
            str(folder / "model.onnx"),
            input_names=["latent_sample"],
            output_names=["sample"],
            dynamic_axes={
                "latent_sample": {0: "batch_size", 2: "height", 3: "width"},
                "sample": {0: "batch_size", 2: "height", 3: "width"},
            },
            opset_version=18,
            dynamo=False,
        )
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae.config).items()}
    config["_class_name"] = "AutoencoderTiny"
    config["_diffusers_version"] = diffusers.__version__
    write_json(folder / "config.json", config)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", type=Path, help="a diffusers AutoencoderTiny folder")
    parser.add_argument("model", type=Path, help="the model folder to add vae_decoder_tiny/ to")
    parser.add_argument("--random", action="store_true", help="TAESD's architecture with random weights")
    args = parser.parse_args()
    from diffusers import AutoencoderTiny

    if args.random == (args.source is not None):
        parser.error("give either SOURCE or --random")
    if args.random:
        import torch

        torch.manual_seed(0)
        vae = AutoencoderTiny()
    else:
        vae = AutoencoderTiny.from_pretrained(args.source)
    export_decoder(vae.eval(), args.model / "vae_decoder_tiny")
    params = sum(p.numel() for p in vae.decoder.parameters())
    log(f"wrote {args.model / 'vae_decoder_tiny'} ({params / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
