"""Makes the benchmark model: the Stable Diffusion 1.5 architecture at full size with random
weights, exported to ONNX by optimum (what `cargo xtask bench` measures; never committed).

Every network has SD 1.5's exact configuration (CLIP ViT-L/14 text encoder with CLIP's real
49408-token BPE vocabulary, the 860M-parameter UNet, the 83M-parameter VAE) and the scheduler
file runwayml/stable-diffusion-v1-5 ships, so every kernel ONNX Runtime runs, and every
tensor's shape, is what the real model makes it run: the timings are the real model's. Only
the pictures are noise.

    python tools/make_bench_model.py OUT      # OUT/diffusers (PyTorch), OUT/onnx (optimum export)

The ONNX folder also carries a tiny VAE decoder (`vae_decoder_tiny/`: TAESD's architecture,
random weights, tools/export_tiny_decoder.py) for the `--decoder tiny` figures.

Idempotent: a finished OUT (marked by OUT/onnx/.complete) is left as it is; a tiny decoder
missing from it is added.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import SD15_SCHEDULER, clip_bpe, log, make_slow_tokenizer, optimum_export, save_diffusers, write_bpe

# CLIP ViT-L/14's text tower, as openai/clip-vit-large-patch14 configures it.
TEXT_ENCODER = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

# runwayml/stable-diffusion-v1-5 unet/config.json (the keys that shape the graph).
UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    use_linear_projection=False,
)

# runwayml/stable-diffusion-v1-5 vae/config.json.
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def build(ddir: Path, tok_dir: Path):
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from common import scheduler_from_config

    vocab, merges = clip_bpe(None)
    write_bpe(tok_dir, vocab, merges)
    tokenizer = make_slow_tokenizer(tok_dir, "<|endoftext|>")
    size = len(tokenizer.get_vocab())
    assert size == 49408, size
    torch.manual_seed(15)
    with torch.no_grad():
        text_encoder = CLIPTextModel(
            CLIPTextConfig(vocab_size=size, bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=1, **TEXT_ENCODER)
        ).eval()
        unet = UNet2DConditionModel(**UNET).eval()
        vae = AutoencoderKL(**VAE).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler_from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    log(f"  parameters: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.0f}M, "
        f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.0f}M")
    save_diffusers(pipe, ddir, SD15_SCHEDULER)


def add_tiny_decoder(onnx: Path):
    """TAESD's decoder at full size, random weights, as `vae_decoder_tiny/` (unless there)."""
    if (onnx / "vae_decoder_tiny" / "model.onnx").is_file():
        return
    import torch
    from diffusers import AutoencoderTiny

    from export_tiny_decoder import export_decoder

    log("== adding a tiny VAE decoder (TAESD's architecture, random weights)")
    torch.manual_seed(16)
    export_decoder(AutoencoderTiny().eval(), onnx / "vae_decoder_tiny")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to make (e.g. target/bench/sd15-random)")
    args = parser.parse_args()
    onnx = args.out / "onnx"
    if (onnx / ".complete").is_file():
        log(f"{onnx} is there already")
        add_tiny_decoder(onnx)
        return
    ddir = args.out / "diffusers"
    if not (ddir / "model_index.json").is_file():
        log(f"== building the SD 1.5 architecture with random weights into {ddir}")
        shutil.rmtree(ddir, ignore_errors=True)
        build(ddir, args.out / "tokenizer")
    log(f"== exporting it with optimum into {onnx}")
    shutil.rmtree(onnx, ignore_errors=True)
    optimum_export(ddir, onnx, "the benchmark model")
    add_tiny_decoder(onnx)
    (onnx / ".complete").write_text("made by tools/make_bench_model.py\n")
    log("done")


if __name__ == "__main__":
    main()
