"""Makes the SDXL benchmark model: SDXL 1.0 base's architecture at full size with random
weights, as ONNX in optimum's layout (what `cargo xtask bench --sdxl` measures; never committed).

Every network has stabilityai/stable-diffusion-xl-base-1.0's configuration — CLIP ViT-L/14 and
OpenCLIP ViT-bigG/14 text encoders with CLIP's real 49408-token BPE vocabulary, the
2.6-billion-parameter UNet (`text_time` conditioning, 1024² native), the VAE with scaling
factor 0.13025 — and SDXL's scheduler file, so every kernel and shape ONNX Runtime runs is the
real model's. Only the pictures are noise.

The UNet is 10.3 GB in float32; optimum's exporter holds the whole pipeline and then a second
copy of the UNet's graph while it gathers the weights into one file (about 24 GB: more than this
project's 24 GiB machines have). So it is made in two parts:

1. optimum exports the pipeline with a small UNet of the same inputs and outputs (text
   encoders, tokenizers, VAE, configs: everything but the UNet, as optimum lays it out);
2. the full UNet alone is exported with torch's exporter as optimum does it (the same input
   and output names, dynamic axes and opset), the model freed, and its weights gathered into
   `unet/model.onnx_data` one tensor at a time (no second copy in memory).

    python tools/make_sdxl_bench_model.py OUT      # OUT/onnx (the model folder), OUT/scratch

Peak memory about 12 GB; 10–20 minutes on 2 cores; 14 GB on disk. Idempotent: a finished OUT
(OUT/onnx/.complete) is left as it is.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
from pathlib import Path

from common import clip_bpe, load_config, log, make_slow_tokenizer, optimum_export, save_diffusers, write_bpe

SDXL_SCHEDULER = load_config("sdxl-scheduler")

# openai/clip-vit-large-patch14's text tower (SDXL's text_encoder).
TEXT_ENCODER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
# OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's text_encoder_2).
TEXT_ENCODER_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the keys that shape the graph).
UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
# The stand-in UNet of part 1: the same inputs and outputs, a few thousand parameters.
SMALL_UNET = dict(UNET, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1),
                  attention_head_dim=(8, 8), layers_per_block=1)

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json.
VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)


def build_pipeline(ddir: Path, tok_dir: Path):
    """Part 1's diffusers pipeline: full-size encoders and VAE, the small UNet."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from common import scheduler_from_config

    vocab, merges = clip_bpe(None)
    write_bpe(tok_dir, vocab, merges)
    tokenizer = make_slow_tokenizer(tok_dir, "<|endoftext|>")
    tokenizer_2 = make_slow_tokenizer(tok_dir, "!")
    size = len(tokenizer.get_vocab())
    assert size == 49408, size
    ids = dict(vocab_size=size, bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=1)
    torch.manual_seed(20)
    with torch.no_grad():
        text_encoder = CLIPTextModel(CLIPTextConfig(**ids, **TEXT_ENCODER)).eval()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **TEXT_ENCODER_2)).eval()
        unet = UNet2DConditionModel(**SMALL_UNET).eval()
        vae = AutoencoderKL(**VAE).eval()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler_from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    log(f"  parameters: text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.0f}M, "
        f"text encoder 2 {sum(p.numel() for p in text_encoder_2.parameters()) / 1e6:.0f}M, "
        f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.0f}M")
    save_diffusers(pipe, ddir, SDXL_SCHEDULER)


def export_unet(onnx: Path, scratch: Path):
    """Part 2: the full UNet, exported as optimum exports SDXL's, its weights gathered into one
    file a tensor at a time."""
    import onnx as onnx_lib
    import torch
    from diffusers import UNet2DConditionModel

    small = onnx_lib.load(str(onnx / "unet" / "model.onnx"), load_external_data=False)
    opset = next(o.version for o in small.opset_import if o.domain in ("", "ai.onnx"))
    names = [i.name for i in small.graph.input]
    assert names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"], names
    del small

    torch.manual_seed(21)
    with torch.no_grad():
        unet = UNet2DConditionModel(**UNET).eval()
    log(f"  unet parameters: {sum(p.numel() for p in unet.parameters()) / 1e9:.2f}B")

    class Unet(torch.nn.Module):
        """The UNet with SDXL's added conditions as plain inputs, in optimum's order."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.inner(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]

    out = scratch / "unet-export"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    dummy = (torch.randn(2, 4, 16, 16), torch.tensor(999.0), torch.randn(2, 77, 2048), torch.randn(2, 1280),
             torch.randn(2, 6))
    batch = {0: "batch_size"}
    axes = {"sample": {0: "batch_size", 2: "height", 3: "width"}, "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
            "text_embeds": batch, "time_ids": batch, "out_sample": {0: "batch_size", 2: "height", 3: "width"}}
    log(f"  torch.onnx.export (opset {opset}) into {out}")
    with torch.no_grad():
        torch.onnx.export(Unet(unet), dummy, str(out / "model.onnx"), input_names=names, output_names=["out_sample"],
                          dynamic_axes=axes, do_constant_folding=True, opset_version=opset, dynamo=False)
    config = dict(unet.config)
    del unet
    gc.collect()
    gather_weights(out / "model.onnx", onnx / "unet")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")}
    (onnx / "unet" / "config.json").write_text(json.dumps(dict(config, _class_name="UNet2DConditionModel"), indent=2))
    shutil.rmtree(out)


def gather_weights(source: Path, folder: Path):
    """Rewrites `source` (external data in one file per tensor) as `folder/model.onnx` with every
    tensor in `folder/model.onnx_data`, copying one tensor at a time."""
    import onnx as onnx_lib
    from onnx.external_data_helper import uses_external_data

    model = onnx_lib.load(str(source), load_external_data=False)
    for old in folder.glob("model.onnx*"):
        old.unlink()
    data_name = "model.onnx_data"
    offset = 0
    with open(folder / data_name, "wb") as data:
        tensors = list(model.graph.initializer)
        for node in model.graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
        for tensor in tensors:
            if not uses_external_data(tensor):
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            with open(source.parent / info["location"], "rb") as part:
                part.seek(int(info.get("offset", 0)))
                raw = part.read(int(info["length"])) if "length" in info else part.read()
            padding = (-offset) % 4096
            data.write(b"\0" * padding)
            offset += padding
            data.write(raw)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
    onnx_lib.save(model, str(folder / "model.onnx"))
    log(f"  unet weights gathered: {offset / 2**30:.2f} GiB in {folder / data_name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to make (e.g. target/bench/sdxl-random)")
    args = parser.parse_args()
    onnx = args.out / "onnx"
    if (onnx / ".complete").is_file():
        log(f"{onnx} is there already")
        return
    scratch = args.out / "scratch"
    ddir = scratch / "diffusers"
    if not (onnx / "model_index.json").is_file():
        log(f"== part 1: SDXL's encoders and VAE at full size, a small UNet, into {ddir}")
        shutil.rmtree(ddir, ignore_errors=True)
        build_pipeline(ddir, scratch / "tokenizer")
        shutil.rmtree(onnx, ignore_errors=True)
        optimum_export(ddir, onnx, "the SDXL benchmark model (small UNet)")
    log("== part 2: the full UNet")
    export_unet(onnx, scratch)
    (onnx / ".complete").write_text("made by tools/make_sdxl_bench_model.py\n")
    shutil.rmtree(scratch, ignore_errors=True)
    log("done")


if __name__ == "__main__":
    main()
