#!/usr/bin/env python3
"""A tiny SDXL-architecture model and diffusers' pictures from it, for easel's SDXL parity.

The model (tests/fixtures/models/sdxl-tiny/) has what makes SDXL SDXL, at a few thousand
parameters: two text encoders (`text_encoder`, a CLIPTextModel of width 32 with quick_gelu,
and `text_encoder_2`, a CLIPTextModelWithProjection of width 48 with gelu and a 40-wide
projection), two tokenizers (the second pads with "!", as SDXL's does), a UNet with
`addition_embed_type="text_time"` (cross-attention 32 + 48 = 80 wide, pooled `text_embeds`
and six `time_ids`), a `force_upcast` VAE with scaling factor 0.13025, SDXL base's scheduler
config (Euler, `leading`, `steps_offset` 1) and `force_zeros_for_empty_prompt`. Random
weights from fixed seeds; exported by optimum exactly as a real SDXL model is.

The references are diffusers' `StableDiffusionXLPipeline` (PyTorch) on that model with given
initial noise: every sampler, guided and not, an empty negative prompt (zeros, as
`force_zeros_for_empty_prompt` says) and a written one, a wide picture, explicit
`original_size` / `crops_coords_top_left` / `target_size`, `guidance_rescale` 0.7, and clip skip (applied to both prompts, as AUTOMATIC1111 does; diffusers applies it to the
prompt only, so that case passes both embeddings). Each is also run
through optimum's `ORTStableDiffusionXLPipeline` on the ONNX files (the table it logs).

Run from the repository root:

    .venv-tools/bin/python tools/make_sdxl_fixtures.py     # ~1 min

Also sdxl-turbo-tiny: the same weights with SDXL-Turbo's scheduler config (Euler ancestral,
`trailing`), for one-to-four-step pictures at guidance 0.

Also the base + refiner ensemble (ensemble-manifest.json): the base with `denoising_end` hands
its latents to the refiner (sdxl-refiner-tiny) with `denoising_start`.

Writes tests/fixtures/models/sdxl-tiny/, tests/fixtures/models/sdxl-turbo-tiny/ and
tests/fixtures/sdxl/ (manifest.json with the
references/ manifest's fields plus `original_size`, `crops_coords_top_left`, `target_size`
and `clip_skip`; noise/*.npy; images/*.png).
"""

from __future__ import annotations

import json
import shutil

import numpy as np

import make_fewstep_fixtures as fewstep
from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, MAX_LEN, NEGATIVE, SCHED_MODULE, STOCHASTIC, TINY_TOKENIZER, VAE_MODULE, NoiseTape, check_strength_schedule,
    expected_step_draws, finish, fixture_args, fresh_dir, load_config, load_ort_pipeline, log, make_scheduler,
    make_slow_tokenizer, optimum_export, ort_vs_pt, record_get_timesteps, reference_entry, save_diffusers, save_png,
    scratch_dir, set_name_or_path, tiny_unet, to_pil, torch_setup, write_json,
)

NAME = "sdxl-tiny"
MODEL = FIX / "models" / NAME
# The same model with stabilityai/sdxl-turbo's scheduler config (Euler ancestral, `trailing`):
# what makes SDXL-Turbo's one-to-four-step pictures, at guidance 0.
TURBO = "sdxl-turbo-tiny"
# stabilityai/sdxl-turbo ships SD-Turbo's config with Euler ancestral in place of Euler.
TURBO_SCHEDULER = dict(fewstep.TURBO_SCHEDULER, _class_name="EulerAncestralDiscreteScheduler")
OUT = FIX / "sdxl"
# stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json.
SDXL_SCHEDULER = load_config("sdxl-scheduler")
PROMPT = "a red circle on a blue background"

# The widths that make the concatenation order visible: 32 from the first encoder, 48 from the
# second, its pooled projection 40; the UNet's time embedding of each of the 6 time ids is 8.
TE1_WIDTH, TE2_WIDTH, POOLED, TIME_EMBED = 32, 48, 40, 8


def xl_unet(seed: int | None, text_width: int, time_ids: int, in_channels: int = 4):
    """The tiny SDXL UNet: `text_width`-wide cross-attention, conditioned on the pooled embedding
    and `time_ids` size (and score) ids, each embedded TIME_EMBED wide. Seeded with `seed`, or
    (None) drawn from torch's generator as it stands."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    return tiny_unet(
        8, True, in_channels=in_channels,
        cross_attention_dim=text_width,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=POOLED + time_ids * TIME_EMBED,
        transformer_layers_per_block=(1, 2),
    )


def build():
    """StableDiffusionXLPipeline with the tiny components (seeded; same every run)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = make_slow_tokenizer(TINY_TOKENIZER, "<|endoftext|>")
    tokenizer_2 = make_slow_tokenizer(TINY_TOKENIZER, "!")
    vocab = len(tokenizer.get_vocab())
    torch.manual_seed(11)

    def clip_config(width, layers, act, projection):
        return CLIPTextConfig(
            vocab_size=vocab, hidden_size=width, intermediate_size=width + 5, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=MAX_LEN, hidden_act=act,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1, projection_dim=projection,
        )

    text_encoder = CLIPTextModel(clip_config(TE1_WIDTH, 3, "quick_gelu", 32)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(TE2_WIDTH, 3, "gelu", POOLED)).eval()
    unet = xl_unet(None, TE1_WIDTH + TE2_WIDTH, 6)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=64, scaling_factor=0.13025, force_upcast=True,
    ).eval()
    from common import scheduler_from_config

    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler_from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def turbo_folder():
    """sdxl-tiny's folder with SDXL-Turbo's scheduler config (the weights are the same)."""
    out = FIX / "models" / TURBO
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(MODEL, out)
    set_name_or_path(out, f"easel-fixtures/{TURBO}")
    write_json(out / "scheduler" / "scheduler_config.json", TURBO_SCHEDULER)
    index = json.loads((out / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", TURBO_SCHEDULER["_class_name"]]
    write_json(out / "model_index.json", index)
    return out


def export(pipe, work):
    ddir = work / "diffusers" / NAME
    save_diffusers(pipe, ddir, SDXL_SCHEDULER)
    if MODEL.exists():
        shutil.rmtree(MODEL)
    optimum_export(ddir, MODEL, NAME)
    set_name_or_path(MODEL, f"easel-fixtures/{NAME}")
    write_json(MODEL / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER)
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index.get("force_zeros_for_empty_prompt") is True, index
    return ddir


# name, sampler, steps, guidance, negative, (width, height), extra pipeline arguments
CASES = [
    ("euler", "euler", 8, 7.5, "", (64, 64), {}),
    ("euler-negative", "euler", 8, 7.5, NEGATIVE, (64, 64), {}),
    ("euler-unguided", "euler", 6, 1.0, "", (64, 64), {}),
    ("euler-wide", "euler", 6, 5.0, NEGATIVE, (96, 64), {}),
    ("euler-sizes", "euler", 6, 5.0, NEGATIVE, (64, 64),
     dict(original_size=(1024, 768), crops_coords_top_left=(16, 32), target_size=(512, 384))),
    ("euler-clipskip2", "euler", 6, 5.0, NEGATIVE, (64, 64), dict(clip_skip=1)),
    ("euler-rescale0.7", "euler", 8, 7.5, NEGATIVE, (64, 64), dict(guidance_rescale=0.7)),
    ("euler_a", "euler_a", 8, 7.5, NEGATIVE, (64, 64), {}),
    ("ddim", "ddim", 8, 7.5, NEGATIVE, (64, 64), {}),
    ("pndm", "pndm", 8, 7.5, NEGATIVE, (64, 64), {}),
    ("dpmpp_2m", "dpmpp_2m", 8, 7.5, NEGATIVE, (64, 64), {}),
    ("dpmpp_2m_karras", "dpmpp_2m_karras", 8, 7.5, NEGATIVE, (64, 64), {}),
    ("heun", "heun", 5, 7.5, NEGATIVE, (64, 64), {}),
    ("lcm", "lcm", 4, 1.0, "", (64, 64), {}),
]
# SDXL-Turbo: guidance 0, one to four steps, its own (ancestral, trailing) sampler and Euler.
TURBO_CASES = [
    ("turbo-1step", "euler_a", 1, 0.0, "", (64, 64), {}),
    ("turbo-2step", "euler_a", 2, 0.0, "", (64, 64), {}),
    ("turbo-4step-euler", "euler", 4, 0.0, "", (64, 64), {}),
]


# img2img with StableDiffusionXLImg2ImgPipeline on make_img2img_fixtures.py's init picture:
# name, sampler, strength, guidance, negative prompt, steps.
IMG2IMG_CASES = [
    ("i2i-euler-s0.6", "euler", 0.6, 7.5, NEGATIVE, 10),
    ("i2i-euler_a-s0.6", "euler_a", 0.6, 7.5, NEGATIVE, 10),
    ("i2i-ddim-s0.5-empty-negative", "ddim", 0.5, 7.5, "", 10),
    ("i2i-dpmpp_2m-s0.75", "dpmpp_2m", 0.75, 5.0, NEGATIVE, 8),
    ("i2i-heun-s0.6", "heun", 0.6, 7.5, NEGATIVE, 6),
    ("i2i-pndm-s0.6-unguided", "pndm", 0.6, 1.0, "", 10),
]
I2I_MODULE = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img"
INIT = "img2img/init-64.png"  # tools/make_img2img_fixtures.py's


def img2img_case(pipe, case, init_pil, sched_file, rng=None, replay=None):
    """One SDXL img2img run with every random draw (the VAE's sample, the noise add_noise mixes
    in, the sampler's) served by a NoiseTape. Returns (image float [H, W, 3], tape, facts)."""
    import torch

    pipe.scheduler = make_scheduler(case["sampler"], sched_file)
    facts = {}
    record_get_timesteps(pipe, facts)
    tape = NoiseTape({"vae_sample": VAE_MODULE, "add_noise": I2I_MODULE, "step": SCHED_MODULE[case["sampler"]]},
                     rng=rng, replay=replay)
    try:
        with tape, torch.no_grad():
            img = pipe(
                prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None, image=init_pil,
                strength=case["strength"], num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                output_type="np", **case.get("extra", {}),
            ).images[0]
    finally:
        del pipe.get_timesteps
    return img, tape, facts


def img2img_references(pipe, ort_pipe, diffs) -> list:
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    i2i = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    ort_i2i = None
    if ort_pipe is not None:
        ort_i2i = load_ort_pipeline("ORTStableDiffusionXLImg2ImgPipeline", MODEL)
    init_pil = Image.open(FIX / INIT).convert("RGB")
    sched_file = MODEL / "scheduler" / "scheduler_config.json"
    manifest = []
    for idx, (name, sampler, strength, guidance, negative, steps) in enumerate(IMG2IMG_CASES):
        case = dict(name=name, prompt="a watercolor of a sunny garden", negative_prompt=negative, steps=steps,
                    strength=strength, guidance_scale=guidance, sampler=sampler)
        img, tape, facts = img2img_case(i2i, case, init_pil, sched_file, rng=np.random.default_rng(9300 + idx))
        labels = ["vae_sample", "add_noise"] + ["step"] * expected_step_draws(sampler, facts["n_run"])
        assert tape.labels == labels, (name, tape.labels, labels)
        check_strength_schedule(i2i.scheduler, steps, strength, facts)
        pil = to_pil(img)
        noise_path, image_path = f"sdxl/noise/{name}.npy", f"sdxl/images/{name}.png"
        np.save(FIX / noise_path, np.stack(tape.drawn).astype(np.float32))
        save_png(FIX / image_path, pil)
        line = f"  {name}: {sampler} strength {strength}, {facts['n_run']} of {steps} steps"
        if ort_i2i is not None:
            oimg, otape, _ = img2img_case(ort_i2i, case, init_pil, sched_file, replay=tape.drawn)
            assert otape.labels == labels
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)
        manifest.append(dict(
            name=name, model=f"models/{NAME}", prompt=case["prompt"], negative_prompt=negative, init_image=INIT,
            width=init_pil.size[0], height=init_pil.size[1], steps=steps, strength=strength, guidance_scale=guidance,
            sampler=sampler, noise=noise_path, noise_draws=labels, image=image_path, timesteps=facts["timesteps"],
            notes="diffusers StableDiffusionXLImg2ImgPipeline (PyTorch); every draw replayed from `noise`",
        ))
    return manifest


# Inpainting with StableDiffusionXLInpaintPipeline (SDXL's 4-channel UNet: the unmasked part is
# blended back after every step) on make_inpaint_fixtures.py's masks; the run itself is
# make_inpaint_fixtures.run_case with SDXL's pipeline module and model.
# name, sampler, strength, guidance, negative prompt, steps, mask
INPAINT_CASES = [
    ("inp-euler-s1.0", "euler", 1.0, 7.5, NEGATIVE, 10, "mask-64.png"),
    ("inp-euler_a-s0.8", "euler_a", 0.8, 7.5, NEGATIVE, 10, "mask-64.png"),
    ("inp-ddim-s0.7-empty-negative", "ddim", 0.7, 7.5, "", 10, "mask-64.png"),
    ("inp-dpmpp_2m-soft-s1.0", "dpmpp_2m", 1.0, 5.0, NEGATIVE, 8, "mask-64-soft.png"),
]
INPAINT_MODULE = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint"
# A dedicated SDXL inpainting model: sdxl-tiny with a 9-channel UNet (latents ‖ mask ‖ masked
# picture latents), seeded apart, exported by optimum with `--task inpainting`.
INPAINT9 = "sdxl-inpaint-tiny"
INPAINT9_CASES = [
    ("inp9-euler-s1.0", "euler", 1.0, 7.5, NEGATIVE, 10, "mask-64.png"),
    ("inp9-ddim-s0.6-empty-negative", "ddim", 0.6, 7.5, "", 10, "mask-64.png"),
    ("inp9-dpmpp_2m-soft-s1.0", "dpmpp_2m", 1.0, 5.0, NEGATIVE, 8, "mask-64-soft.png"),
]


def make_inpaint9_model(pipe, work):
    """The 9-channel SDXL inpainting pipeline, exported; its folder is sdxl-tiny's with the
    exported unet/ and model_index.json. Returns the PyTorch pipeline."""
    from diffusers import StableDiffusionXLInpaintPipeline

    unet = xl_unet(12, TE1_WIDTH + TE2_WIDTH, 6, in_channels=9)
    components = dict(pipe.components, unet=unet)
    pt = StableDiffusionXLInpaintPipeline(**components, requires_aesthetics_score=False)
    pt.set_progress_bar_config(disable=True)
    ddir = work / "diffusers" / INPAINT9
    save_diffusers(pt, ddir, SDXL_SCHEDULER)
    exported = work / "onnx" / INPAINT9
    optimum_export(ddir, exported, INPAINT9, task="inpainting")
    out = FIX / "models" / INPAINT9
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(MODEL, out)
    shutil.rmtree(out / "unet")
    shutil.copytree(exported / "unet", out / "unet")
    shutil.copy2(exported / "model_index.json", out / "model_index.json")
    set_name_or_path(out, f"easel-fixtures/{INPAINT9}")
    for part in ("text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder"):
        assert (exported / part / "model.onnx").read_bytes() == (MODEL / part / "model.onnx").read_bytes(), part
    return pt


def inpaint_references(pipe, ort_pipe, diffs, work) -> list:
    import make_inpaint_fixtures as inpaint
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image

    inpaint.PIPE_MODULE = INPAINT_MODULE
    inpaint.model_dir = lambda model: FIX / "models" / model
    pt4 = StableDiffusionXLInpaintPipeline(**pipe.components)
    pt4.set_progress_bar_config(disable=True)
    pt9 = make_inpaint9_model(pipe, work)
    pipes = {NAME: pt4, INPAINT9: pt9}
    init_pil = Image.open(FIX / INIT).convert("RGB")
    manifest = []
    cases = [(NAME, *c) for c in INPAINT_CASES] + [(INPAINT9, *c) for c in INPAINT9_CASES]
    for idx, (model, name, sampler, strength, guidance, negative, steps, mask) in enumerate(cases):
        case = dict(name=name, model=model, prompt="a stone fountain in a sunny garden", negative_prompt=negative,
                    steps=steps, strength=strength, guidance_scale=guidance, sampler=sampler)
        mask_pil = Image.open(FIX / "inpaint" / mask)
        img, tape, rec = inpaint.run_case(pipes[model], case, init_pil, mask_pil, rng=np.random.default_rng(9400 + idx))
        if model == INPAINT9:
            assert all(call["sample"].shape[1] == 9 for call in rec["unet"]), "the UNet saw 9 channels"
        pil = to_pil(img)
        noise_path, image_path = f"sdxl/noise/{name}.npy", f"sdxl/images/{name}.png"
        np.save(FIX / noise_path, np.stack(tape.drawn).astype(np.float32))
        save_png(FIX / image_path, pil)
        line = f"  {name}: {sampler} strength {strength}, draws {rec['labels']}"
        if ort_pipe is not None:
            ort = load_ort_pipeline("ORTStableDiffusionXLInpaintPipeline", FIX / "models" / model)
            oimg, _, _ = inpaint.run_case(ort, case, init_pil, mask_pil, replay=tape.drawn)
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)
        manifest.append(dict(
            name=name, model=f"models/{model}", prompt=case["prompt"], negative_prompt=negative, init_image=INIT,
            mask=f"inpaint/{mask}", width=init_pil.size[0], height=init_pil.size[1], steps=steps, strength=strength,
            guidance_scale=guidance, sampler=sampler, noise=noise_path, noise_draws=rec["labels"], image=image_path,
            timesteps=rec["timesteps"],
            notes="diffusers StableDiffusionXLInpaintPipeline (PyTorch), the decoded picture before any composite; "
                  "every draw replayed from `noise`",
        ))
    return manifest


# The refiner: text_encoder_2 alone (no first encoder), a UNet attending to its 48-wide states
# and conditioned on 5 time ids (original size, crop, aesthetic score), an img2img model
# (`requires_aesthetics_score`). Exported with optimum's image-to-image task.
REFINER = "sdxl-refiner-tiny"
# name, sampler, strength, guidance, negative prompt, steps, aesthetic score, negative aesthetic score
REFINER_CASES = [
    ("refiner-euler-s0.3", "euler", 0.3, 7.5, NEGATIVE, 10, 6.0, 2.5),
    ("refiner-ddim-s0.5-scores", "ddim", 0.5, 5.0, NEGATIVE, 10, 7.5, 1.5),
    ("refiner-euler_a-s0.4-empty-negative", "euler_a", 0.4, 7.5, "", 10, 6.0, 2.5),
]


def make_refiner(pipe, work):
    """The tiny refiner pipeline (seeded), exported; returns it."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    unet = xl_unet(13, TE2_WIDTH, 5)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=pipe.vae, text_encoder=None, text_encoder_2=pipe.text_encoder_2, tokenizer=None,
        tokenizer_2=pipe.tokenizer_2, unet=unet, scheduler=pipe.scheduler, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    refiner.set_progress_bar_config(disable=True)
    ddir = work / "diffusers" / REFINER
    save_diffusers(refiner, ddir, SDXL_SCHEDULER)
    out = FIX / "models" / REFINER
    if out.exists():
        shutil.rmtree(out)
    optimum_export(ddir, out, REFINER, task="image-to-image")
    set_name_or_path(out, f"easel-fixtures/{REFINER}")
    write_json(out / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER)
    return refiner


def refiner_references(pipe, ort_pipe, diffs, work, refiner) -> list:
    from PIL import Image

    ort = None if ort_pipe is None else load_ort_pipeline("ORTStableDiffusionXLImg2ImgPipeline", FIX / "models" / REFINER)
    init_pil = Image.open(FIX / INIT).convert("RGB")
    sched_file = FIX / "models" / REFINER / "scheduler" / "scheduler_config.json"
    manifest = []
    for idx, (name, sampler, strength, guidance, negative, steps, score, negative_score) in enumerate(REFINER_CASES):
        case = dict(name=name, prompt="a watercolor of a sunny garden", negative_prompt=negative, steps=steps,
                    strength=strength, guidance_scale=guidance, sampler=sampler,
                    extra=dict(aesthetic_score=score, negative_aesthetic_score=negative_score))
        img, tape, facts = img2img_case(refiner, case, init_pil, sched_file, rng=np.random.default_rng(9500 + idx))
        labels = ["vae_sample", "add_noise"] + ["step"] * expected_step_draws(sampler, facts["n_run"])
        assert tape.labels == labels, (name, tape.labels, labels)
        pil = to_pil(img)
        noise_path, image_path = f"sdxl/noise/{name}.npy", f"sdxl/images/{name}.png"
        np.save(FIX / noise_path, np.stack(tape.drawn).astype(np.float32))
        save_png(FIX / image_path, pil)
        line = f"  {name}: {sampler} strength {strength}, scores {score}/{negative_score}"
        if ort is not None:
            oimg, _, _ = img2img_case(ort, case, init_pil, sched_file, replay=tape.drawn)
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)
        manifest.append(dict(
            name=name, model=f"models/{REFINER}", prompt=case["prompt"], negative_prompt=negative, init_image=INIT,
            width=init_pil.size[0], height=init_pil.size[1], steps=steps, strength=strength, guidance_scale=guidance,
            sampler=sampler, noise=noise_path, noise_draws=labels, image=image_path, timesteps=facts["timesteps"],
            aesthetic_score=score, negative_aesthetic_score=negative_score,
            notes="diffusers StableDiffusionXLImg2ImgPipeline (PyTorch) with the refiner; every draw replayed",
        ))
    return manifest


# Base + refiner in one request, as diffusers' "ensemble of expert denoisers": the base runs the
# schedule's timesteps down to the switch (`denoising_end`, `output_type="latent"`) and hands its
# latents as they are to the refiner, which runs the rest (`denoising_start`: no VAE encode, no
# add_noise). The same noise tape serves both, as one generator passed to both would.
# name, sampler, steps, guidance, negative prompt, switch, (width, height), extra
ENSEMBLE_CASES = [
    ("ensemble-euler-0.8", "euler", 10, 7.5, NEGATIVE, 0.8, (64, 64), {}),
    ("ensemble-euler_a-0.5-empty-negative", "euler_a", 8, 7.5, "", 0.5, (64, 64), {}),
    ("ensemble-heun-0.7", "heun", 6, 5.0, NEGATIVE, 0.7, (64, 64), {}),
    ("ensemble-heun-0.5", "heun", 6, 5.0, NEGATIVE, 0.5, (64, 64), {}),
    ("ensemble-dpmpp_2m-0.8", "dpmpp_2m", 10, 7.5, NEGATIVE, 0.8, (64, 64), {}),
    ("ensemble-ddim-0.6", "ddim", 10, 7.5, NEGATIVE, 0.6, (64, 64), {}),
    ("ensemble-pndm-0.8", "pndm", 10, 7.5, NEGATIVE, 0.8, (64, 64), {}),
    ("ensemble-euler-0.75-sizes-scores", "euler", 10, 7.5, NEGATIVE, 0.75, (96, 64),
     dict(original_size=(128, 192), crops_coords_top_left=(8, 16), target_size=(64, 96),
          aesthetic_score=7.0, negative_aesthetic_score=2.0)),
]


def ensemble_references(pipe, refiner) -> list:
    """Base (denoising_end) then refiner (denoising_start) on the same prompts and noise tape."""
    import torch

    base_sched = MODEL / "scheduler" / "scheduler_config.json"
    refiner_sched = FIX / "models" / REFINER / "scheduler" / "scheduler_config.json"
    manifest = []
    for idx, (name, sampler, steps, guidance, negative, switch, (width, height), extra) in enumerate(ENSEMBLE_CASES):
        noise = np.random.default_rng(9700 + idx).standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)
        pipe.scheduler = make_scheduler(sampler, base_sched)
        refiner.scheduler = make_scheduler(sampler, refiner_sched)
        ran = {"base": [], "refiner": []}

        def record(stage):
            def callback(_pipe, _i, t, kwargs):
                ran[stage].append(float(t))
                return kwargs

            return callback

        sizes = {k: extra[k] for k in ("original_size", "crops_coords_top_left") if k in extra}
        scores = {k: extra[k] for k in ("aesthetic_score", "negative_aesthetic_score") if k in extra}
        common = dict(prompt="a lighthouse on a rocky coast", negative_prompt=negative or None,
                      num_inference_steps=steps, guidance_scale=guidance)
        tape = NoiseTape({"step": SCHED_MODULE[sampler], "add_noise": I2I_MODULE, "vae_sample": VAE_MODULE},
                         rng=np.random.default_rng(9800 + idx))
        with tape, torch.no_grad():
            latents = pipe(**common, width=width, height=height, latents=torch.from_numpy(noise.copy()),
                           denoising_end=switch, output_type="latent", callback_on_step_end=record("base"),
                           **sizes, **({"target_size": extra["target_size"]} if "target_size" in extra else {}),
                           ).images
            img = refiner(**common, image=latents, denoising_start=switch, output_type="np",
                          callback_on_step_end=record("refiner"), **sizes, **scores).images[0]
        assert set(tape.labels) <= {"step"}, tape.labels
        n_evals = len(ran["base"]) + len(ran["refiner"])
        assert len(tape.drawn) == expected_step_draws(sampler, len(ran["base"])) + expected_step_draws(
            sampler, len(ran["refiner"])), (name, len(tape.drawn))
        pil = to_pil(img)
        noise_path, image_path = f"sdxl/noise/{name}.npy", f"sdxl/images/{name}.png"
        np.save(FIX / noise_path, noise)
        step_noise = None
        if tape.drawn:
            step_noise = f"sdxl/noise/{name}.steps.npy"
            np.save(FIX / step_noise, np.stack(tape.drawn).astype(np.float32))
        save_png(FIX / image_path, pil)
        log(f"  {name}: {sampler} {steps} steps, switch {switch}: base {len(ran['base'])} + refiner "
            f"{len(ran['refiner'])} of {n_evals} UNet evaluations")
        manifest.append(dict(
            name=name, model=f"models/{NAME}", refiner=f"models/{REFINER}", prompt=common["prompt"],
            negative_prompt=negative, width=width, height=height, steps=steps, guidance_scale=guidance,
            sampler=sampler, switch=switch, init_noise=noise_path, step_noise=step_noise, image=image_path,
            base_timesteps=ran["base"], refiner_timesteps=ran["refiner"],
            original_size=list(extra["original_size"]) if "original_size" in extra else None,
            crops_coords_top_left=list(extra["crops_coords_top_left"]) if "crops_coords_top_left" in extra else None,
            target_size=list(extra["target_size"]) if "target_size" in extra else None,
            aesthetic_score=extra.get("aesthetic_score"), negative_aesthetic_score=extra.get("negative_aesthetic_score"),
            notes="diffusers StableDiffusionXLPipeline (denoising_end, output_type='latent') then "
                  "StableDiffusionXLImg2ImgPipeline with the refiner (denoising_start, image = those latents); "
                  "one noise tape for both",
        ))
    return manifest


# force_upcast: a float16 VAE decoder whose activations pass float16's range (the middle block's
# first convolution scaled by 1e5, its weights still within float16; the group norm after it
# scales that back, so in float32 the picture is the same), and the picture diffusers decodes
# with it in float32. ONNX Runtime's CPU kernels compute this graph in float32 behind casts (the
# recorded as-is difference is within rounding); GPU kernels compute in float16, where it would
# overflow.
OVERFLOW_SCALE = 1e5
OVERFLOWING = ("decoder.mid_block.resnets.0.conv1.weight", "decoder.mid_block.resnets.0.conv1.bias")


def fp16_vae_fixture(pipe) -> dict:
    import copy

    import onnx
    import torch
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = OUT / "fp16-vae"
    (out / "vae_decoder").mkdir(parents=True)
    vae = copy.deepcopy(pipe.vae).float()
    params = dict(vae.named_parameters())
    with torch.no_grad():
        for name in OVERFLOWING:
            params[name].mul_(OVERFLOW_SCALE)
    graph = onnx.load(str(MODEL / "vae_decoder" / "model.onnx"))
    scaled = 0
    for init in graph.graph.initializer:
        if init.name in OVERFLOWING:
            values = numpy_helper.to_array(init) * np.float32(OVERFLOW_SCALE)
            # The weights themselves fit float16: only the activations they make overflow it.
            assert np.abs(values).max() < 65504, np.abs(values).max()
            init.CopyFrom(numpy_helper.from_array(values, init.name))
            scaled += 1
    assert scaled == len(OVERFLOWING), scaled
    half = convert_float_to_float16(graph, keep_io_types=False)
    onnx.save(half, str(out / "vae_decoder" / "model.onnx"))
    config = json.loads((MODEL / "vae_decoder" / "config.json").read_text())
    assert config["force_upcast"] is True
    write_json(out / "vae_decoder" / "config.json", config)

    latent = np.random.default_rng(9600).standard_normal((1, 4, 8, 8), dtype=np.float32)
    np.save(out / "latent.npy", latent)
    with torch.no_grad():
        decoded = vae.decode(torch.from_numpy(latent) / vae.config.scaling_factor).sample
    picture = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    save_png(out / "decoded.png", to_pil(picture))
    # What the float16 graph makes without the upcast (ONNX Runtime on the CPU), recorded.
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "vae_decoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = session.run(None, {"latent_sample": (latent / vae.config.scaling_factor).astype(np.float16)})[0]
    as_is = np.clip(raw.astype(np.float32) / 2 + 0.5, 0, 1)[0].transpose(1, 2, 0)
    off = np.abs(np.asarray(to_pil(as_is), dtype=np.float64) - np.asarray(to_pil(picture), dtype=np.float64))
    facts = dict(overflow_scale=OVERFLOW_SCALE, scaled=list(OVERFLOWING),
                 float16_as_is_vs_float32=dict(mean=float(off.mean()), max=float(off.max())))
    write_json(out / "facts.json", facts)
    log(f"  fp16 VAE run as float16 vs diffusers' float32 decode: mean {off.mean():.2f}, max {off.max():.0f} (0-255)")
    return facts


def run(pipe, case, noise, sched_file, extra, tape_kwargs):
    """common.run_pipe's call with SDXL's own arguments (time ids, clip skip) added."""
    import torch

    from common import NoiseTape

    pipe.scheduler = make_scheduler(case["sampler"], sched_file)
    kw = dict(
        prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None, width=case["width"],
        height=case["height"], num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
        latents=torch.from_numpy(noise.copy()), output_type="np", **extra,
    )
    if "clip_skip" in extra:
        # diffusers applies clip_skip to the prompt only; AUTOMATIC1111 (and easel) to the
        # negative prompt too: both are encoded here with it and passed as embeddings.
        skip = kw.pop("clip_skip")
        with torch.no_grad():
            cond, _, pooled, _ = pipe.encode_prompt(kw.pop("prompt"), do_classifier_free_guidance=False,
                                                    clip_skip=skip)
            uncond, _, uncond_pooled, _ = pipe.encode_prompt(kw.pop("negative_prompt") or "",
                                                             do_classifier_free_guidance=False, clip_skip=skip)
        kw.update(prompt_embeds=cond, pooled_prompt_embeds=pooled, negative_prompt_embeds=uncond,
                  negative_pooled_prompt_embeds=uncond_pooled)
    tape = None
    if case["sampler"] in STOCHASTIC:
        tape = NoiseTape({"step": STOCHASTIC[case["sampler"]]}, **tape_kwargs)
        with tape, torch.no_grad():
            return pipe(**kw).images[0], tape
    with torch.no_grad():
        return pipe(**kw).images[0], None


def main():
    ap = fixture_args(__doc__, skip_ort=True)
    args = ap.parse_args()
    torch_setup()
    work = scratch_dir("easel-sdxl-")
    log(f"== model {NAME}")
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    ddir = export(pipe, work)
    turbo = turbo_folder()
    sched_files = {NAME: ddir / "scheduler" / "scheduler_config.json",
                   TURBO: turbo / "scheduler" / "scheduler_config.json"}
    ort_pipe = None if args.skip_ort else load_ort_pipeline("ORTStableDiffusionXLPipeline", MODEL)

    fresh_dir(OUT, ("noise", "images"))
    manifest, diffs = [], []
    cases = [(NAME, *case) for case in CASES] + [(TURBO, *case) for case in TURBO_CASES]
    for idx, (model, name, sampler, steps, guidance, negative, (width, height), extra) in enumerate(cases):
        sched_file = sched_files[model]
        case = dict(name=name, prompt=PROMPT, negative_prompt=negative, width=width, height=height, steps=steps,
                    guidance_scale=guidance, sampler=sampler)
        noise = np.random.default_rng(9100 + idx).standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)
        noise_path = f"sdxl/noise/{name}.npy"
        np.save(FIX / noise_path, noise)
        img, tape = run(pipe, case, noise, sched_file, extra, {"rng": np.random.default_rng(9200 + idx)})
        pil = to_pil(img)
        image_path = f"sdxl/images/{name}.png"
        save_png(FIX / image_path, pil)
        step_noise = None
        if tape is not None and tape.drawn:
            step_noise = f"sdxl/noise/{name}.steps.npy"
            np.save(FIX / step_noise, np.stack(tape.drawn).astype(np.float32))
        line = f"  {name}: {sampler} {steps} steps, guidance {guidance}, {width}x{height}"
        if ort_pipe is not None:
            replay = {"replay": tape.drawn} if tape is not None else {}
            oimg, _ = run(ort_pipe, case, noise, sched_file, extra, replay)
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)
        sizes = dict(
            original_size=list(extra.get("original_size", (height, width))),
            crops_coords_top_left=list(extra.get("crops_coords_top_left", (0, 0))),
            target_size=list(extra.get("target_size", (height, width))),
            # easel's clip skip (1 = the layer the model uses) is diffusers' + 1.
            clip_skip=extra.get("clip_skip", 0) + 1,
            guidance_rescale=extra.get("guidance_rescale", 0.0),
        )
        manifest.append(reference_entry(
            case, f"models/{model}", noise_path, step_noise, image_path,
            notes="diffusers StableDiffusionXLPipeline (PyTorch), latents= this noise",
            before_notes=sizes,
        ))
    write_json(OUT / "img2img-manifest.json", img2img_references(pipe, ort_pipe, diffs))
    write_json(OUT / "inpaint-manifest.json", inpaint_references(pipe, ort_pipe, diffs, work))
    refiner = make_refiner(pipe, work)
    write_json(OUT / "refiner-manifest.json", refiner_references(pipe, ort_pipe, diffs, work, refiner))
    write_json(OUT / "ensemble-manifest.json", ensemble_references(pipe, refiner))
    fp16_vae_fixture(pipe)
    finish(OUT, manifest, diffs)


if __name__ == "__main__":
    main()
