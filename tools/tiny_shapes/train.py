#!/usr/bin/env python3
"""Train tiny-shapes, easel's embedded default model, from nothing - a worked example of how
a model becomes an easel model.

    .venv-tools/bin/python tools/tiny_shapes/train.py --quick --device cpu --out /tmp/tiny-shapes-quick
    .venv-tools/bin/python tools/tiny_shapes/train.py --device cuda --out /tmp/tiny-shapes    # the recipe

tiny-shapes is Stable Diffusion in miniature: the same three networks, trained the same way,
on a toy world where a caption names one shape, its colour and the background colour
("a red circle on a blue background"). The result is an ordinary SD 1.x model folder in
optimum's ONNX layout, so everything easel does with a real model it can test with this one.

The stages below follow the recipe in /work/shared/models/tiny-shapes-reference/RECIPE.md
(the reference weights that easel ships were trained with it):

  0. data       procedurally drawn 128x128 pictures with captions (data.py), seeded.
  1. VAE        an AutoencoderKL that squeezes 128x128x3 pixels into 16x16x4 latents
                (factor 8, like SD): first as an autoencoder (L1 + MSE + a small KL term),
                then its decoder alone is fine-tuned on the frozen encoder's latents.
                scaling_factor = 1 / std(latents), so the diffusion model sees unit variance
                (SD 1.5's 0.18215 was found the same way).
  2. latents    the whole data set is encoded once; the VAE is not needed while step 3 runs.
  3. UNet + text encoder, trained jointly from scratch: add noise to a latent at a random
                timestep, ask the UNet (conditioned on the caption's CLIP embedding) for the
                noise, minimise the min-SNR-5-weighted MSE. 10% of the captions are blanked
                so the model also learns the unconditional prediction that classifier-free
                guidance and negative prompts steer against.
                A caption probe (right / empty / shuffled caption) shows when the model starts
                to read the text (CaptionProbe says why that needs watching).
  4. save       a diffusers StableDiffusionPipeline folder (loadable with from_pretrained),
                then export.py turns it into the ONNX folder easel loads.
  5. check      held-out captions drawn through optimum's ORT pipeline, judged by data.judge.

--quick is a CPU-sized version of the same recipe (small data set, a few hundred steps) that
shows the machinery works end to end in minutes; it does not make a usable model. The full
recipe needs a GPU: about 3-4 minutes on one H200 for the UNet (the VAE is small).
Everything is seeded: the data are a function of the seed, and on CPU two runs give the same
weights (on CUDA a few kernels are not bit-deterministic).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # data.py and export.py; tools/common.py
# common sets HF_HUB_OFFLINE etc.; MAX_LEN is CLIP's context length: every caption is padded to 77 tokens
from common import MAX_LEN, assemble_pipeline, log, scheduler_from_config, write_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
import export  # noqa: E402


# --------------------------------------------------------------------------------------
# Settings: the recipe (full) and its CPU-sized version (quick)
# --------------------------------------------------------------------------------------


@dataclass
class Settings:
    n_train: int  # pictures in the training set
    vae_steps: int  # autoencoder steps (L1 + MSE + KL)
    vae_decoder_steps: int  # decoder-only fine-tune steps
    vae_batch: int
    vae_lr: float
    kl_weight: float
    unet_steps: int
    unet_batch: int
    lr: float = 1e-3  # peak, UNet + text encoder
    warmup: int = 100
    final_lr_frac: float = 0.1  # cosine decay to 10% of the peak
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    min_snr_gamma: float = 5.0
    caption_dropout: float = data.EMPTY_CAPTION_PROB
    log_every: int = 100
    probe_every: int = 500


FULL = Settings(
    n_train=10_000, vae_steps=4000, vae_decoder_steps=1000, vae_batch=32, vae_lr=1e-3, kl_weight=1e-5,
    unet_steps=2364, unet_batch=256, log_every=100, probe_every=400,
)
QUICK = Settings(
    n_train=1024, vae_steps=300, vae_decoder_steps=50, vae_batch=8, vae_lr=1e-3, kl_weight=1e-5,
    unet_steps=400, unet_batch=16, warmup=40, log_every=50, probe_every=100,
)

# The scheduler config that ships with the model: SD 1.5's betas (scaled_linear
# 0.00085-0.012, 1000 steps), DDIM as the default sampler, epsilon prediction. Every key is
# explicit, exactly as the reference model's file, so easel and diffusers build the same
# sampler from it (see DESIGN.md: a key that is absent takes each class's default).
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.35.2",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def seed_everything(seed: int, device: str):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Bit-for-bit on CPU; on CUDA a few kernels (e.g. nearest-upsample backward) have no
    # deterministic version, so only warn there.
    torch.use_deterministic_algorithms(True, warn_only=device == "cuda")
    if device == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True  # the UNet runs under bf16 autocast anyway
        torch.backends.cudnn.allow_tf32 = True


def lr_lambda(warmup: int, total: int, final_frac: float):
    """Linear warm-up to the peak, then cosine decay to final_frac of it."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p))

    return f


class LossLog:
    """Collects per-step losses; prints window averages and the first/last comparison."""

    def __init__(self, name: str, every: int):
        self.name, self.every, self.values, self.t0 = name, every, [], time.time()

    def add(self, step: int, total: int, loss: float, **extra):
        self.values.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == total:
            w = self.values[-self.every:]
            rate = (step + 1) / (time.time() - self.t0)
            more = "".join(f" {k} {v:.3g}" for k, v in extra.items())
            log(f"  {self.name} step {step + 1:5d}/{total}  loss {np.mean(w):.4f}  ({rate:.2f} steps/s){more}")

    def first_last(self, n: int | None = None) -> tuple[float, float]:
        n = n or max(1, len(self.values) // 10)
        return float(np.mean(self.values[:n])), float(np.mean(self.values[-n:]))


# --------------------------------------------------------------------------------------
# The three networks (architectures of the reference model, RECIPE.md)
# --------------------------------------------------------------------------------------


def make_vae():
    """AutoencoderKL: 4 blocks (16, 32, 32, 32) -> factor 8, 4 latent channels. About 0.3 M
    parameters; SD's VAE is the same design at (128, 256, 512, 512)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=data.SIZE,
    )


def make_text_encoder():
    """CLIP's text transformer (as in SD 1.x: causal attention, quick_gelu, the real 49,408-token
    BPE vocabulary), shrunk to 2 layers of width 64. About 3.3 M parameters, almost all of them
    the token embedding table."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LEN,
            hidden_act="quick_gelu",
            projection_dim=64,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def make_unet():
    """UNet2DConditionModel on 16x16x4 latents with cross-attention to the text (SD 1.x's
    design with 3 levels instead of 4, channels (64, 128, 128) instead of (320, 640, 1280,
    1280)). About 5.8 M parameters."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=data.SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=2,
        norm_num_groups=32,
    )


# --------------------------------------------------------------------------------------
# 1. VAE
# --------------------------------------------------------------------------------------


def batches(n: int, batch: int, steps: int, gen: torch.Generator):
    """Indices for `steps` batches: shuffled epochs, reshuffled each time round."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch]
        pos += batch


def pixels(images_u8: torch.Tensor, idx, device) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [B, 3, H, W] in -1..1 on the device."""
    x = images_u8[idx].to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def train_vae(images_u8: torch.Tensor, s: Settings, device: str, seed: int):
    """Autoencoder first, then the decoder alone. Trained at the full 128 px: a VAE trained
    on 64-px crops left artefacts at the picture edges (RECIPE.md)."""
    vae = make_vae()
    # Start with a narrow posterior (std e^-3 ≈ 0.05 instead of 1): at init the sampled latent
    # would otherwise be mostly noise, and the decoder spends its first few hundred steps
    # unable to learn anything. The KL term is free to widen it again.
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = -6.0  # the logvar half of the moments
    vae = vae.to(device).train()
    gen = torch.Generator().manual_seed(seed + 1)
    n = len(images_u8)

    # (a) autoencoder: L1 + MSE reconstruction of a sample from the posterior, plus a small
    # KL(q(z|x) || N(0, I)) that keeps the latent space smooth and bounded.
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(100, s.vae_steps // 10), s.vae_steps, 0.1))
    losses = LossLog("vae", s.log_every)
    for step, idx in enumerate(batches(n, s.vae_batch, s.vae_steps, gen)):
        x = pixels(images_u8, idx, device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        y = vae.decode(z).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = rec + s.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.add(step, s.vae_steps, rec.item(), kl=kl.item())

    # (b) decoder fine-tune: the encoder is frozen, so the latents the UNet will learn are
    # fixed; the decoder gets to specialise in turning exactly those into sharp pictures.
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    dec_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(dec_params, lr=s.vae_lr * 0.3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(50, s.vae_decoder_steps // 10), s.vae_decoder_steps, 0.1))
    dlosses = LossLog("vae-decoder", s.log_every)
    for step, idx in enumerate(batches(n, s.vae_batch, s.vae_decoder_steps, gen)):
        x = pixels(images_u8, idx, device)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        y = vae.decode(z).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec_params, 1.0)
        opt.step()
        sched.step()
        dlosses.add(step, s.vae_decoder_steps, loss.item())
    vae.requires_grad_(True)
    return vae.eval(), losses, dlosses


@torch.no_grad()
def check_vae(vae, images_u8: np.ndarray, labels, device) -> dict:
    """Reconstruct held-out pictures and judge them like generated ones: how much of what the
    UNet could ever get right does the VAE keep?"""
    x = torch.from_numpy(data.to_tensor_range(images_u8)).to(device)
    y = torch.cat([vae.decode(vae.encode(x[i : i + 32]).latent_dist.mean).sample for i in range(0, len(x), 32)])
    l1 = float((y - x).abs().mean())
    rec = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    colours = shapes = 0
    for img, lab in zip(rec, labels):
        j = data.judge(img)
        colours += j["colour"] == lab["colour"] and j["background"] == lab["background"]
        shapes += j["shape"] == lab["shape"]
    return dict(n=len(labels), l1=l1, colours_right=colours, shapes_right=shapes)


# --------------------------------------------------------------------------------------
# 2. Latents
# --------------------------------------------------------------------------------------


@torch.no_grad()
def encode_all(vae, images_u8: torch.Tensor, device: str, batch: int = 128):
    """Encode every picture once (the posterior mean: with a small KL weight the posterior
    is narrow, so its mean is what a sample would be) and find the scaling factor."""
    zs = []
    for i in range(0, len(images_u8), batch):
        x = pixels(images_u8, slice(i, i + batch), device)
        zs.append(vae.encode(x).latent_dist.mean.float().cpu())
    z = torch.cat(zs)
    scaling_factor = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    return z * scaling_factor, scaling_factor


@torch.no_grad()
def encode_held_out(vae, images_np: np.ndarray, scaling_factor: float, device: str) -> torch.Tensor:
    x = torch.from_numpy(data.to_tensor_range(images_np)).to(device)
    return torch.cat([vae.encode(x[i : i + 64]).latent_dist.mean for i in range(0, len(x), 64)]).cpu() * scaling_factor


# --------------------------------------------------------------------------------------
# 3. UNet + text encoder
# --------------------------------------------------------------------------------------


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids [N, 77], padded with <|endoftext|> exactly as diffusers' pipeline does."""
    return tokenizer(captions, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids


def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0..999 from the shipped scheduler config (the same betas at inference)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.float()


def add_noise(z0, noise, t, abar):
    """x_t = sqrt(ᾱ_t) z0 + sqrt(1 - ᾱ_t) ε (the forward process)."""
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def eps_loss(unet, te, z0, ids, t, noise, abar, min_snr_gamma=None, reduce=True):
    """The training objective: predict the noise. With min_snr_gamma, each sample's MSE is
    weighted by min(SNR_t, γ) / SNR_t (Hang et al. 2023, "min-SNR"): the many nearly-clean
    timesteps (huge SNR, easy) stop dominating, and training converges faster."""
    xt = add_noise(z0, noise, t, abar)
    cond = te(ids).last_hidden_state  # [B, 77, 64]: the UNet's cross-attention context
    pred = unet(xt, t, cond).sample
    per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma is not None:
        snr = abar[t] / (1 - abar[t])
        per_sample = per_sample * torch.clamp(snr, max=min_snr_gamma) / snr
    return per_sample.mean() if reduce else per_sample


class CaptionProbe:
    """Is the model reading the caption yet? Held-out latents, fixed noise, fixed timesteps;
    the plain (unweighted) noise-prediction loss with the right caption, an empty caption and
    another picture's caption. A model that ignores the text scores the same on all three;
    one that reads it is hurt badly by a wrong caption. The shipped reference model gives
    right / empty / shuffled = 0.0105 / 0.0104 / 0.111 at t=200 and 0.0051 / 0.0054 / 0.022
    at t=800 (the right and the empty caption are close: a half-noised latent still shows
    the colours; a wrong caption contradicts it).

    Why it is worth watching: SD's schedule leaves ᾱ_T ≈ 0.0047, so even a fully noised
    latent keeps sqrt(ᾱ_T) ≈ 7% of the clean one, and its mean still correlates 0.7-0.8 with
    the clean latent in two of the four channels. Early in training the UNet takes the
    colours from the noise instead of the caption: the total loss falls nicely, yet the
    pictures ignore the prompt. The reference's CPU attempt (1,066 steps of batch 32) still
    had the text unused and got 0/24 colours right (RECIPE.md)."""

    def __init__(self, latents, ids, empty_ids, device, timesteps=(200, 500, 800), seed=1234):
        g = torch.Generator().manual_seed(seed)
        n = len(latents)
        self.z0 = latents.to(device)
        self.ids = ids.to(device)
        self.empty = empty_ids.expand(n, -1).to(device)
        self.shuffled = self.ids.roll(1, dims=0)  # every picture gets its neighbour's caption
        self.noise = torch.randn(self.z0.shape, generator=g).to(device)
        self.timesteps = timesteps

    @torch.no_grad()
    def __call__(self, unet, te, abar, autocast) -> dict:
        res = {}
        for t in self.timesteps:
            tt = torch.full((len(self.z0),), t, device=self.z0.device, dtype=torch.long)
            for name, ids in (("right", self.ids), ("empty", self.empty), ("shuffled", self.shuffled)):
                with autocast():
                    res[f"t{t}_{name}"] = float(eps_loss(unet, te, self.z0, ids, tt, self.noise, abar))
        return res

    @staticmethod
    def line(r: dict) -> str:
        parts = []
        for t in sorted({k.split("_")[0] for k in r}, key=lambda k: int(k[1:])):
            parts.append(f"t={t[1:]}: right {r[t + '_right']:.4f} empty {r[t + '_empty']:.4f} shuffled {r[t + '_shuffled']:.4f}")
        return "; ".join(parts)


def train_unet(latents, ids, empty_ids, probe: CaptionProbe, s: Settings, device: str, seed: int):
    unet = make_unet().to(device).train()
    te = make_text_encoder().to(device).train()
    abar = alphas_cumprod().to(device)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(s.warmup, s.unet_steps, s.final_lr_frac))

    def autocast():  # bf16 on CUDA (the UNet's matmuls); plain float32 on CPU
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    latents, ids = latents.to(device), ids.to(device)
    empty = empty_ids.to(device)
    gen = torch.Generator().manual_seed(seed + 2)
    losses = LossLog("unet", s.log_every)
    probes = []

    def run_probe(step):
        unet.eval(), te.eval()
        r = probe(unet, te, abar, autocast)
        unet.train(), te.train()
        probes.append(dict(step=step, **r))
        log(f"  probe @ {step:5d}: " + CaptionProbe.line(r))

    run_probe(0)
    for step, idx in enumerate(batches(len(latents), s.unet_batch, s.unet_steps, gen)):
        b = len(idx)
        z0 = latents[idx.to(device)]
        caps = ids[idx.to(device)]
        # caption dropout: an empty caption for ~10% of the batch, fresh every step
        drop = (torch.rand(b, generator=gen) < s.caption_dropout).to(device)
        caps = torch.where(drop[:, None], empty.expand(b, -1), caps)
        t = torch.randint(0, 1000, (b,), generator=gen).to(device)  # uniform timesteps
        noise = torch.randn(z0.shape, generator=gen).to(device)
        with autocast():
            loss = eps_loss(unet, te, z0, caps, t, noise, abar, s.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        sched.step()
        losses.add(step, s.unet_steps, loss.item(), lr=sched.get_last_lr()[0], gnorm=gnorm.item())
        if (step + 1) % s.probe_every == 0 or step + 1 == s.unet_steps:
            run_probe(step + 1)
    return unet.eval(), te.eval(), losses, probes


# --------------------------------------------------------------------------------------
# 4. Save (diffusers) and export (ONNX)
# --------------------------------------------------------------------------------------


def save_diffusers(folder: Path, vae, unet, te):
    """A complete StableDiffusionPipeline folder: loadable with from_pretrained, and what
    export.py reads (text_encoder/, unet/, vae/, scheduler/)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = export.build_tokenizer(Path(tmp))
    pipe = assemble_pipeline(vae.float().cpu(), te.float().cpu(), tokenizer, unet.float().cpu(), scheduler_from_config(SCHEDULER_CONFIG))
    pipe.save_pretrained(folder)
    write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)


# --------------------------------------------------------------------------------------
# 5. Check: held-out captions through the exported model
# --------------------------------------------------------------------------------------


def check_model(onnx_dir: Path, dest: Path, steps=20, guidance=7.5) -> dict:
    """RECIPE.md's held-out check: 24 captions (every colour x every shape, another
    background), DDIM 20 steps, guidance 7.5, 128x128, through optimum's ORT pipeline on the
    exported folder; each picture judged by data.judge. Saves a contact sheet."""
    from optimum.onnxruntime import ORTStableDiffusionPipeline
    from PIL import Image

    pipe = ORTStableDiffusionPipeline.from_pretrained(onnx_dir, provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)
    prompts = data.held_out_prompts()
    sheet = Image.new("RGB", (128 * 8, 128 * 3))
    colours = shapes = 0
    t0 = time.time()
    for i, p in enumerate(prompts):
        img = pipe(p["prompt"], height=128, width=128, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(i)).images[0]
        sheet.paste(img, (128 * (i % 8), 128 * (i // 8)))
        j = data.judge(np.asarray(img))
        colours += j["colour"] == p["colour"] and j["background"] == p["background"]
        shapes += j["shape"] == p["shape"]
    secs = (time.time() - t0) / len(prompts)
    sheet.save(dest)
    return dict(n=len(prompts), colours_right=colours, shapes_right=shapes, seconds_per_picture=secs, sheet=str(dest))


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="CPU-sized run of the same recipe (minutes; not a usable model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tiny-shapes"), help="writes OUT/diffusers, OUT/onnx, OUT/report.json, OUT/samples.png")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu, with --quick on a small machine)")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, dev)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings, t_all = {}, time.time()
    log(f"== tiny-shapes: {'quick' if args.quick else 'full'} mode on {dev} "
        f"({torch.cuda.get_device_name() if dev == 'cuda' else f'{args.threads} CPU threads'}), seed {args.seed}")
    log("   " + ", ".join(f"{k}={v}" for k, v in asdict(s).items()))

    # 0. data: the training set from the seed; a held-out set (another seed) for the checks
    t0 = time.time()
    images, captions, _ = data.make_dataset(s.n_train, seed=args.seed)
    held_images, held_captions, held_labels = data.make_dataset(128, seed=10_000 + args.seed)
    images_u8 = torch.from_numpy(images)
    timings["data_s"] = time.time() - t0
    log(f"== 0. data: {s.n_train} pictures in {timings['data_s']:.1f} s; e.g. {captions[0]!r}, {captions[1]!r}")

    # 1. VAE
    t0 = time.time()
    log(f"== 1. VAE ({sum(p.numel() for p in make_vae().parameters()) / 1e6:.2f} M parameters)")
    vae, vae_log, dec_log = train_vae(images_u8, s, dev, args.seed)
    timings["vae_s"] = time.time() - t0
    vae_check = check_vae(vae, held_images, held_labels, dev)
    log(f"   VAE: {timings['vae_s']:.0f} s; reconstruction loss first/last {vae_log.first_last()[0]:.4f} -> {vae_log.first_last()[1]:.4f}, "
        f"decoder fine-tune {dec_log.first_last()[0]:.4f} -> {dec_log.first_last()[1]:.4f}; held-out: L1 {vae_check['l1']:.3f}, "
        f"colours right {vae_check['colours_right']}/{vae_check['n']}, shapes {vae_check['shapes_right']}/{vae_check['n']}")

    # 2. latents (the whole data set, once) and the scaling factor
    t0 = time.time()
    latents, scaling_factor = encode_all(vae, images_u8, dev)
    held_latents = encode_held_out(vae, held_images, scaling_factor, dev)
    timings["encode_s"] = time.time() - t0
    log(f"== 2. latents {tuple(latents.shape)}, scaling_factor {scaling_factor:.4f} (1/std), {timings['encode_s']:.1f} s")

    # 3. UNet + text encoder
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = export.build_tokenizer(Path(tmp))
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])
    probe = CaptionProbe(held_latents[:64], tokenize(tokenizer, held_captions[:64]), empty_ids, dev)
    log(f"== 3. UNet ({sum(p.numel() for p in make_unet().parameters()) / 1e6:.2f} M) + text encoder "
        f"({sum(p.numel() for p in make_text_encoder().parameters()) / 1e6:.2f} M), {s.unet_steps} steps of batch {s.unet_batch}")
    t0 = time.time()
    unet, te, unet_log, probes = train_unet(latents, ids, empty_ids, probe, s, dev, args.seed)
    timings["unet_s"] = time.time() - t0
    first, last = unet_log.first_last()
    log(f"   UNet: {timings['unet_s']:.0f} s ({s.unet_steps / timings['unet_s']:.2f} steps/s); loss first/last 10% of steps {first:.4f} -> {last:.4f}")

    # 4. save + export
    t0 = time.time()
    save_diffusers(out / "diffusers", vae, unet, te)
    export.export(out / "diffusers", out / "onnx")
    timings["save_export_s"] = time.time() - t0
    log(f"== 4. saved {out / 'diffusers'} and exported {out / 'onnx'} ({timings['save_export_s']:.0f} s)")
    export.sizes(out / "onnx")

    # 5. check the exported model
    t0 = time.time()
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(out / "diffusers")  # the diffusers folder loads as a whole
    diffs = export.check(out / "diffusers", out / "onnx")
    held = check_model(out / "onnx", out / "samples.png")
    timings["check_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_all
    log(f"== 5. held-out: colours right {held['colours_right']}/24, shapes right {held['shapes_right']}/24 "
        f"({held['seconds_per_picture']:.2f} s/picture in the ORT pipeline); {held['sheet']}")

    report = dict(
        mode="quick" if args.quick else "full", device=dev, seed=args.seed, settings=asdict(s), timings_s=timings,
        vae=dict(loss_first_last=vae_log.first_last(), decoder_loss_first_last=dec_log.first_last(), held_out=vae_check,
                 scaling_factor=scaling_factor),
        unet=dict(loss_first_last=(first, last), probes=probes), onnx_vs_torch=diffs, held_out=held,
        versions={m: __import__(m).__version__ for m in ("torch", "diffusers", "transformers", "onnxruntime", "numpy")},
    )
    write_json(out / "report.json", report)
    log(f"== done in {timings['total_s']:.0f} s: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
