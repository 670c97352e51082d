#!/usr/bin/env python3
"""Regenerate easel's inpainting test fixtures under tests/fixtures/inpaint/.

Run from the repository root (after make_fixtures.py and make_img2img_fixtures.py have made
tests/fixtures/models/ and tests/fixtures/img2img/init-*.png):

    .venv-tools/bin/python tools/make_inpaint_fixtures.py            # everything
    .venv-tools/bin/python tools/make_inpaint_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

It rebuilds the PyTorch modules of the tiny models with common.py's builder (the one
make_fixtures.py uses), checks them against the committed ONNX files, then writes:

  inpaint/models/sd1-tiny-inpaint/  sd1-tiny with a 9-channel inpainting UNet (seeded random
                                    weights, exported with optimum); every other file is sd1-tiny's
  inpaint/mask-64.png, mask-80x48.png, mask-64-soft.png   deterministic masks (white = repaint)
  inpaint/noise/<case>.npy          every N(0,1) draw of the run, in draw order
  inpaint/mask_latent/<case>.npy    the latent-resolution mask diffusers used
  inpaint/images/<case>.png         diffusers' StableDiffusionInpaintPipeline output
  inpaint/manifest.json             the cases + the diffusers facts easel must mirror

The init pictures are img2img's (tests/fixtures/img2img/init-*.png), referenced, not copied.
See tools/README.md ("make_inpaint_fixtures.py") for what each field means.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    DPM_FAMILY, FIX, MODEL_SPECS, NEGATIVE, SCHED_MODULE, SIGMA_FAMILY, VAE_MODULE, NoiseTape,
    add_noise_facts, assemble_pipeline, cached_pipelines, check_strength_schedule, describe_signature,
    expected_step_draws, finish, fixture_args, fresh_dir, log, make_scheduler, onnx_signature, optimum_export,
    ort_vs_pt, rebuild_and_verify, record_get_timesteps, save_diffusers, save_png, scheduler_from_config,
    scratch_dir, set_name_or_path, tiny_unet, to_pil, torch_setup, verify_model,
)

OUT = FIX / "inpaint"
SD1 = FIX / "models" / "sd1-tiny"
INPAINT = "sd1-tiny-inpaint"
INPAINT_UNET_SEED = 21
PIPE_MODULE = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint"
MASK_INTERPOLATION = "nearest"  # torch.nn.functional.interpolate(mask, size=latent size): the default mode


# --------------------------------------------------------------------------------------
# masks (integer arithmetic only)
# --------------------------------------------------------------------------------------

# rectangle [x0, x1) x [y0, y1) and disc (cx, cy, r), chosen so that most edges are off the
# 8-pixel latent grid
HARD_MASKS = {
    "mask-64.png": (64, 64, (9, 29, 39, 57), (43, 22, 14)),
    "mask-80x48.png": (80, 48, (5, 19, 35, 44), (57, 18, 13)),
}


def hard_mask(w, h, rect, disc) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    x0, y0, x1, y1 = rect
    cx, cy, r = disc
    m = ((x >= x0) & (x < x1) & (y >= y0) & (y < y1)) | ((x - cx) ** 2 + (y - cy) ** 2 <= r * r)
    return np.where(m, 255, 0).astype(np.uint8)


def soft_mask() -> np.ndarray:
    """64x64 with gray levels: rows 0-23 a horizontal ramp (x * 255) // 63; rows 24-39 8x8
    blocks of 127 and 128 (checkerboard, so both values sit on latent grid points); rows 40-63
    a feathered disc (255 inside r 6, falling to 0 at r 14)."""
    w = h = 64
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    v = np.zeros((h, w), dtype=np.int64)
    top = y < 24
    v[top] = ((x * 255) // 63)[top]
    mid = (y >= 24) & (y < 40)
    v[mid] = np.where(((x // 8) + (y // 8)) % 2 == 0, 127, 128)[mid]
    bot = y >= 40
    d2 = (x - 40) ** 2 + (y - 52) ** 2
    v[bot] = np.clip(((196 - d2) * 255) // (196 - 36), 0, 255)[bot]
    return v.astype(np.uint8)


def binarize(mask_u8: np.ndarray) -> np.ndarray:
    """What diffusers' mask processor does to an 'L' picture already at the right size."""
    m = mask_u8.astype(np.float32) / 255.0
    return np.where(m < 0.5, 0.0, 1.0).astype(np.float32)


def latent_mask_alternatives(mask_u8: np.ndarray, f: int) -> dict:
    """Other plausible downsamplings, to show the fixture tells them apart from 'nearest'."""
    b = binarize(mask_u8)
    h, w = b.shape
    blocks = b.reshape(h // f, f, w // f, f)
    nearest = b[::f, ::f]
    return {
        "block_centre": int((b[f // 2 :: f, f // 2 :: f] != nearest).sum()),
        "block_mean_ge_0.5": int(((blocks.mean(axis=(1, 3)) >= 0.5).astype(np.float32) != nearest).sum()),
        "block_any": int((blocks.max(axis=(1, 3)) != nearest).sum()),
    }


# --------------------------------------------------------------------------------------
# the 9-channel model
# --------------------------------------------------------------------------------------


def build_inpaint_unet():
    """sd1-tiny's UNet architecture with in_channels=9 (latents 4 + mask 1 + masked image 4)."""
    import torch

    spec = MODEL_SPECS["sd1-tiny"]
    torch.manual_seed(INPAINT_UNET_SEED)
    return tiny_unet(spec["unet_sample"], spec["use_linear_projection"], in_channels=9)


def make_inpaint_model(sd1_pipe, work: Path):
    """Save + export the 9-channel pipeline; assemble models/sd1-tiny-inpaint from sd1-tiny's
    files plus the exported unet/ and model_index.json. Returns the diffusers folder."""
    from diffusers import StableDiffusionInpaintPipeline

    spec = MODEL_SPECS["sd1-tiny"]
    pipe = assemble_pipeline(sd1_pipe.vae, sd1_pipe.text_encoder, sd1_pipe.tokenizer, build_inpaint_unet(),
                             scheduler_from_config(spec["scheduler"]), cls=StableDiffusionInpaintPipeline)
    ddir = work / "diffusers" / INPAINT
    save_diffusers(pipe, ddir, spec["scheduler"])
    exp = work / "onnx" / INPAINT
    optimum_export(ddir, exp, INPAINT, task="inpainting")
    set_name_or_path(exp, f"easel-fixtures/{INPAINT}")
    same = {part: (exp / part / "model.onnx").read_bytes() == (SD1 / part / "model.onnx").read_bytes()
            for part in ("text_encoder", "vae_decoder", "vae_encoder")}
    log(f"  exported text encoder / VAE ONNX byte-identical to sd1-tiny's: {same}")
    assert all(same.values()), same

    out = OUT / "models" / INPAINT
    shutil.copytree(SD1, out)
    shutil.rmtree(out / "unet")
    shutil.copytree(exp / "unet", out / "unet")
    shutil.copy2(exp / "model_index.json", out / "model_index.json")
    mi = json.loads((out / "model_index.json").read_text())
    assert mi["_class_name"] == "StableDiffusionInpaintPipeline", mi
    # the only differences from sd1-tiny's model_index.json: _class_name and _name_or_path
    base = json.loads((SD1 / "model_index.json").read_text())
    diff = sorted(k for k in set(mi) | set(base) if mi.get(k) != base.get(k))
    assert diff == ["_class_name", "_name_or_path"], diff
    sig = onnx_signature(out / "unet" / "model.onnx")
    assert sig["inputs"][0] == {"name": "sample", "dtype": "float", "shape": ["batch_size", 9, "height", "width"]}, sig
    assert sig["outputs"][0]["shape"] == ["batch_size", 4, "height", "width"], sig
    return ddir, sig


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------


def build_cases():
    cases = []

    def add(name, model, sampler, strength, cfg=7.5, steps=10, init="init-64.png", mask="mask-64.png",
            prompt="a stone fountain in a sunny garden", notes=""):
        cases.append(dict(name=name, model=model, prompt=prompt, negative_prompt=NEGATIVE if cfg > 1 else "", init_image=init,
                          mask=mask, steps=steps, strength=strength, guidance_scale=cfg, sampler=sampler, notes=notes))

    # 9-channel inpainting UNet: the UNet sees [latents, mask, masked image latents]
    m9 = INPAINT
    add("inp9-euler-s1.0", m9, "euler", 1.0)
    add("inp9-euler-s0.6", m9, "euler", 0.6, prompt="a red door in a white wall")
    add("inp9-euler_a-s1.0", m9, "euler_a", 1.0)
    add("inp9-ddim-nocfg-s1.0", m9, "ddim", 1.0, cfg=1.0, prompt="a red cube on a table")
    add("inp9-dpmpp_2m-s1.0", m9, "dpmpp_2m", 1.0)
    add("inp9-pndm-s1.0", m9, "pndm", 1.0)
    add("inp9-heun-s0.75", m9, "heun", 0.75, prompt="a snowy mountain village")
    add("inp9-lcm-4step-s1.0", m9, "lcm", 1.0, steps=4, prompt="a lighthouse at dusk")
    add("inp9-euler-soft-s1.0", m9, "euler", 1.0, mask="mask-64-soft.png", prompt="a bowl of fruit, still life")
    add("inp9-dpmpp_2m-80x48-s1.0", m9, "dpmpp_2m", 1.0, init="init-80x48.png", mask="mask-80x48.png",
        prompt="a wide landscape, mountains and a lake")
    # 4-channel (ordinary) UNets: diffusers blends the latents after every step
    add("sd1-euler-s1.0", "sd1-tiny", "euler", 1.0)
    add("sd1-euler-s0.6", "sd1-tiny", "euler", 0.6, prompt="a red door in a white wall")
    add("sd1-euler_a-s0.8", "sd1-tiny", "euler_a", 0.8)
    add("sd1-ddim-s0.7", "sd1-tiny", "ddim", 0.7, prompt="an oil painting of a harbour")
    add("sd1-dpmpp_2m-s1.0", "sd1-tiny", "dpmpp_2m", 1.0)
    add("sd1-heun-s1.0", "sd1-tiny", "heun", 1.0, prompt="a snowy mountain village")
    add("sd1-pndm-s0.6", "sd1-tiny", "pndm", 0.6, prompt="an oil painting of a harbour")
    add("sd1-lcm-4step-s0.75", "sd1-tiny", "lcm", 0.75, steps=4, prompt="a lighthouse at dusk")
    add("sd1-euler-soft-s1.0", "sd1-tiny", "euler", 1.0, mask="mask-64-soft.png", prompt="a bowl of fruit, still life")
    add("sd2-euler-s1.0", "sd2-tiny-v", "euler", 1.0, prompt="a watercolor painting of a fox in the snow",
        notes="v-prediction; VAE factor 4: latent 16x16, mask_latent = binarized mask at pixels (4i, 4j)")
    return cases


def model_dir(model: str) -> Path:
    return OUT / "models" / model if model == INPAINT else FIX / "models" / model


def model_rel(model: str) -> str:
    return model_dir(model).relative_to(FIX).as_posix()


# --------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------


def blend_coeffs(sampler, sched, idx, t):
    """add_noise's noisy = a * x0 + b * noise at sigma index idx / timestep t (without the formula)."""
    d = add_noise_facts(sampler, sched, idx, t)
    d.pop("formula")
    return d


def run_case(pipe, case, init_pil, mask_pil, rng=None, replay=None, output_type="np"):
    """One inpaint run with every random draw served by a NoiseTape and the pipeline's
    internals recorded. Returns (image, tape, rec)."""
    import torch

    pipe.scheduler = make_scheduler(case["sampler"], model_dir(case["model"]) / "scheduler" / "scheduler_config.json")
    sched = pipe.scheduler
    tape = NoiseTape({"vae_sample": VAE_MODULE, "init_noise": PIPE_MODULE, "step": SCHED_MODULE[case["sampler"]]},
                     rng=rng, replay=replay)
    rec = {"spans": {}, "add_noise": [], "unet": [], "steps": 0}
    record_get_timesteps(pipe, rec)

    def spanned(label, fn):
        def wrapper(*a, **k):
            start = len(tape.drawn)
            out = fn(*a, **k)
            rec["spans"][label] = (start, len(tape.drawn))
            rec[label] = (a, k, out)
            return out

        return wrapper

    orig_add_noise = sched.add_noise

    def add_noise(x0, noise, t):
        y = orig_add_noise(x0, noise, t)
        rec["add_noise"].append(dict(in_loop=rec["steps"] > 0, t=[float(v) for v in t], step_index=getattr(sched, "step_index", None),
                                     x0=x0.clone(), noise=noise.clone(), y=y.clone()))
        return y

    orig_step = sched.step

    def step(*a, **k):
        out = orig_step(*a, **k)
        rec["steps"] += 1
        return out

    unet = pipe.unet
    orig_fwd = unet.forward

    def fwd(sample, timestep, *a, **k):
        rec["unet"].append(dict(sample=sample.clone(), t=float(timestep)))
        return orig_fwd(sample, timestep, *a, **k)

    pipe.prepare_latents = spanned("prepare_latents", pipe.prepare_latents)
    pipe.prepare_mask_latents = spanned("prepare_mask_latents", pipe.prepare_mask_latents)
    sched.add_noise = add_noise
    sched.step = step
    unet.forward = fwd
    try:
        with tape, torch.no_grad():
            out = pipe(
                prompt=case["prompt"],
                image=init_pil,
                mask_image=mask_pil,
                width=init_pil.size[0],
                height=init_pil.size[1],
                strength=case["strength"],
                num_inference_steps=case["steps"],
                guidance_scale=case["guidance_scale"],
                negative_prompt=case["negative_prompt"] or None,
                output_type=output_type,
            )
    finally:
        del pipe.get_timesteps, pipe.prepare_latents, pipe.prepare_mask_latents
        unet.forward = orig_fwd
    if replay is not None:
        assert len(tape.drawn) == len(replay), f"replay: {len(tape.drawn)} draws of {len(replay)} recorded"
    # name the VAE draws by the encode they belong to
    labels = []
    for i, lab in enumerate(tape.labels):
        if lab == "vae_sample":
            in_lat = rec["spans"]["prepare_latents"][0] <= i < rec["spans"]["prepare_latents"][1]
            in_mask = rec["spans"]["prepare_mask_latents"][0] <= i < rec["spans"]["prepare_mask_latents"][1]
            assert in_lat != in_mask, (i, rec["spans"])
            lab = "vae_sample_image" if in_lat else "vae_sample_masked_image"
        labels.append(lab)
    rec["labels"] = labels
    return out.images[0], tape, rec


def encode_with(vae, x: np.ndarray, eps: np.ndarray):
    """scaling_factor * (mean + std * eps), what retrieve_latents(latent_dist.sample()) gives."""
    import torch

    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x)).latent_dist
        return vae.config.scaling_factor * (dist.mean + dist.std * torch.from_numpy(eps))


def check_and_describe(pipe, case, init_pil, mask_u8, img_tape, rec):
    """Assert the semantics the README states, on this run; return the manifest facts."""
    import torch

    sampler, strength, cfg = case["sampler"], case["strength"], case["guidance_scale"]
    sched = pipe.scheduler
    in_ch = pipe.unet.config.in_channels
    f = pipe.vae_scale_factor
    w, h = init_pil.size
    lat_shape = (1, 4, h // f, w // f)
    cfg_on = cfg > 1
    is_strength_max = strength == 1.0
    drawn = img_tape.drawn
    labels = rec["labels"]

    # 1. draw order
    want = []
    if in_ch == 4 or not is_strength_max:
        want.append("vae_sample_image")
    want += ["init_noise", "vae_sample_masked_image"] + ["step"] * expected_step_draws(sampler, rec["n_run"])
    assert labels == want, (case["name"], labels, want)
    assert all(a.shape == lat_shape for a in drawn), [a.shape for a in drawn]
    at = {lab: drawn[labels.index(lab)] for lab in set(labels) if lab != "step"}

    # 2. timesteps (as img2img)
    init_timestep, t_start, order = check_strength_schedule(sched, case["steps"], strength, rec)
    assert [u["t"] for u in rec["unet"]] == rec["timesteps"]

    # 3. mask processing: 'L', binarize at 0.5 (no resize: same size), nearest to latent size
    (pm_args, pm_kw, (mask_lat, mil)) = rec["prepare_mask_latents"]
    mask_condition, masked_image = pm_args[0], pm_args[1]
    px = binarize(mask_u8)
    assert np.array_equal(mask_condition.numpy(), px[None, None]), "pixel mask != binarize(L / 255)"
    want_lat = px[::f, ::f][None, None]
    ml = mask_lat.numpy()
    assert ml.shape == ((2 if cfg_on else 1), 1, h // f, w // f), ml.shape
    assert all(np.array_equal(ml[i : i + 1], want_lat) for i in range(ml.shape[0])), "latent mask != mask[f*i, f*j]"
    init_np = (2.0 * (np.asarray(init_pil).astype(np.float32) / 255.0) - 1.0).transpose(2, 0, 1)[None].astype(np.float32)
    mi_np = init_np * (px[None, None] < 0.5)
    assert np.array_equal(masked_image.numpy(), mi_np), "masked image != image * (mask < 0.5)"
    mil_want = encode_with(pipe.vae, mi_np, at["vae_sample_masked_image"])
    assert mil.shape[0] == (2 if cfg_on else 1)
    assert all(torch.allclose(mil[i : i + 1], mil_want, atol=1e-6) for i in range(mil.shape[0])), "masked_image_latents"

    # 4. initial latents
    (pl_args, pl_kw, pl_out) = rec["prepare_latents"]
    latents0, noise = pl_out[0], pl_out[1]
    assert np.array_equal(noise.numpy(), at["init_noise"])
    image_latents = None
    if "vae_sample_image" in at:
        image_latents = encode_with(pipe.vae, init_np, at["vae_sample_image"])
        if in_ch == 4:
            assert torch.allclose(pl_out[2], image_latents, atol=1e-6)
    pre_loop = [r for r in rec["add_noise"] if not r["in_loop"]]
    if is_strength_max:
        assert not pre_loop
        sigma0 = float(sched.init_noise_sigma)
        assert torch.equal(latents0, noise * sched.init_noise_sigma)
        init = dict(source="noise", formula="latents = init_noise * init_noise_sigma", init_noise_sigma=sigma0)
    else:
        assert len(pre_loop) == 1
        lt = pre_loop[0]["t"]
        assert lt == rec["timesteps"][:1], (lt, rec["timesteps"][:1])
        an = add_noise_facts(sampler, sched, rec["begin_index"], lt[0])
        assert torch.allclose(pre_loop[0]["x0"], image_latents, atol=1e-6)
        assert torch.allclose(latents0, an["a"] * image_latents + an["b"] * noise, atol=1e-5)
        init = dict(source="add_noise", latent_timestep=lt[0], **an)
        init["formula"] = "latents = add_noise(image_latents, init_noise, latent_timestep): " + init["formula"]

    # 5. UNet input: batch (CFG duplicates), channels, concat order for 9-channel UNets
    for u in rec["unet"]:
        s = u["sample"]
        assert s.shape == ((2 if cfg_on else 1), in_ch, h // f, w // f), s.shape
        if in_ch == 9:
            assert torch.equal(s[:, 4:5], mask_lat) and torch.equal(s[:, 5:9], mil)
    # the latents part is scale_model_input(latents) (mask and masked image latents are not scaled):
    # latents / sqrt(sigma^2 + 1) for the sigma schedulers, unchanged for the others
    s0 = rec["unet"][0]["sample"][:, :4]
    k = 1.0
    if sampler in SIGMA_FAMILY:
        k = float((sched.sigmas[rec["begin_index"]] ** 2 + 1) ** 0.5)
    assert all(torch.allclose(s0[i : i + 1], latents0 / k, atol=1e-5) for i in range(s0.shape[0])), case["name"]

    # 6. 4-channel blending after every scheduler.step
    blend = None
    loop_adds = [r for r in rec["add_noise"] if r["in_loop"]]
    n_calls = len(rec["timesteps"])
    if in_ch == 4:
        assert len(loop_adds) == n_calls - 1, (len(loop_adds), n_calls)
        blend = []
        for i in range(n_calls):
            if i == n_calls - 1:
                blend.append(dict(i=i, t=rec["timesteps"][i], noise_timestep=None, a=1.0, b=0.0))
                continue
            r = loop_adds[i]
            nt = rec["timesteps"][i + 1]
            assert r["t"] == [nt], (r["t"], nt)
            assert torch.allclose(r["x0"], image_latents, atol=1e-6) and np.array_equal(r["noise"].numpy(), at["init_noise"])
            e = dict(i=i, t=rec["timesteps"][i], noise_timestep=nt)
            if sampler in SIGMA_FAMILY or sampler in DPM_FAMILY:
                # add_noise uses sigmas[step_index], step_index already advanced by step(): the
                # sigma of timesteps[i + 1] (for Heun too: its sigmas are interleaved like its timesteps)
                assert r["step_index"] == rec["begin_index"] + i + 1, (r["step_index"], rec["begin_index"], i)
                e["sigma_index"] = r["step_index"]
                c = blend_coeffs(sampler, sched, r["step_index"], nt)
            else:
                c = blend_coeffs(sampler, sched, None, nt)
            assert torch.allclose(r["y"], c["a"] * r["x0"] + c["b"] * r["noise"], atol=1e-5), (case["name"], i)
            e.update(c)
            blend.append(e)
    else:
        assert not loop_adds

    facts = dict(
        unet_in_channels=in_ch,
        vae_scale_factor=f,
        latent_shape=list(lat_shape),
        unet_batch=2 if cfg_on else 1,
        init_timestep=init_timestep,
        t_start=t_start,
        scheduler_order=order,
        begin_index=rec["begin_index"],
        timesteps=rec["timesteps"],
        full_timesteps=rec["full_timesteps"],
        unet_calls=n_calls,
        is_strength_max=is_strength_max,
        image_encoded="vae_sample_image" in at,
        init_latents=init,
        blend=blend,
    )
    return facts


def main():
    args = fixture_args(__doc__, skip_ort=True).parse_args()

    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    torch_setup()
    fresh_dir(OUT, ("models", "noise", "images", "mask_latent"))
    work = scratch_dir("easel-inpaint-")

    # 1. PyTorch modules rebuilt from make_fixtures' seeds, checked against the committed ONNX
    ddirs, verify, pipes = {}, {}, {}
    for name in MODEL_SPECS:
        pipes[name], ddirs[name], verify[name] = rebuild_and_verify(name, work)
    sd1 = pipes["sd1-tiny"]

    # 2. the 9-channel model
    log(f"== model {INPAINT} (UNet seed {INPAINT_UNET_SEED})")
    ddirs[INPAINT], sig = make_inpaint_model(sd1, work)
    d = verify_model(INPAINT, ddirs[INPAINT], OUT / "models" / INPAINT)
    assert max(d.values()) < 1e-4, d
    verify[INPAINT] = d
    log("  unet: " + describe_signature(sig))

    # 3. masks
    masks = {fname: hard_mask(w, h, rect, disc) for fname, (w, h, rect, disc) in HARD_MASKS.items()}
    masks["mask-64-soft.png"] = soft_mask()
    for fname, arr in masks.items():
        save_png(OUT / fname, arr, "L")
        b = binarize(arr)
        vals = np.unique(arr)
        log(f"  {fname}: {arr.shape[1]}x{arr.shape[0]}, repaint {b.mean() * 100:.1f}% of pixels, {len(vals)} gray levels, "
            f"nearest vs other latent downsamplings (cells differing, f=8): {latent_mask_alternatives(arr, 8)}")
        assert 0.3 <= b.mean() <= 0.5, (fname, b.mean())
    assert {127, 128} <= set(np.unique(masks["mask-64-soft.png"]).tolist())

    # 4. references
    pt_pipe, ort_pipe = cached_pipelines(StableDiffusionInpaintPipeline, ddirs.get, "ORTStableDiffusionInpaintPipeline", model_dir)

    manifest, diffs = [], []
    for idx, case in enumerate(build_cases()):
        init_pil = Image.open(FIX / "img2img" / case["init_image"]).convert("RGB")
        mask_pil = Image.open(OUT / case["mask"])
        assert mask_pil.mode == "L" and mask_pil.size == init_pil.size
        mask_u8 = np.asarray(mask_pil)
        w, h = init_pil.size
        pipe = pt_pipe(case["model"])
        img, tape, rec = run_case(pipe, case, init_pil, mask_pil, rng=np.random.default_rng(9000 + idx))
        facts = check_and_describe(pipe, case, init_pil, mask_u8, tape, rec)
        pil = to_pil(img)
        assert pil.size == (w, h)

        # replay the recorded draws, with output_type="pil": the same picture, byte for byte
        rimg, rtape, rrec = run_case(pipe, case, init_pil, mask_pil, replay=tape.drawn, output_type="pil")
        assert rrec["labels"] == rec["labels"]
        assert np.array_equal(np.asarray(rimg), np.asarray(pil)), f"{case['name']}: replay differs"

        noise_path = f"inpaint/noise/{case['name']}.npy"
        np.save(FIX / noise_path, np.stack(tape.drawn).astype(np.float32))
        ml_path = f"inpaint/mask_latent/{case['name']}.npy"
        ml = rec["prepare_mask_latents"][2][0][:1].numpy().astype(np.float32)
        np.save(FIX / ml_path, ml)
        img_path = f"inpaint/images/{case['name']}.png"
        save_png(FIX / img_path, pil)

        n_el = int(np.prod(facts["latent_shape"]))
        entry = dict(
            name=case["name"],
            model=model_rel(case["model"]),
            unet_in_channels=facts.pop("unet_in_channels"),
            prompt=case["prompt"],
            negative_prompt=case["negative_prompt"],
            init_image=f"img2img/{case['init_image']}",
            mask=f"inpaint/{case['mask']}",
            width=w,
            height=h,
            steps=case["steps"],
            strength=case["strength"],
            guidance_scale=case["guidance_scale"],
            sampler=case["sampler"],
            noise=noise_path,
            noise_draws=[{"what": lab, "len": n_el} for lab in rec["labels"]],
            image=img_path,
            mask_latent=ml_path,
            mask_latent_interpolation=MASK_INTERPOLATION,
            masked_image="image * (mask < 0.5): image in [-1, 1], mask binarized at pixel resolution; masked pixels become 0.0",
            **facts,
            notes=case["notes"],
        )
        manifest.append(entry)

        line = (f"  {case['name']:<26} draws {len(rec['labels']):2d} ({','.join(l.replace('vae_sample_', 'v:') for l in rec['labels'] if l != 'step')}"
                f"+{rec['labels'].count('step')} step)  unet calls {facts['unet_calls']:2d}  std {np.asarray(pil).astype(np.float32).std():5.1f}")
        if not args.skip_ort:
            oimg, otape, orec = run_case(ort_pipe(case["model"]), case, init_pil, mask_pil, replay=tape.drawn)
            assert orec["labels"] == rec["labels"], (orec["labels"], rec["labels"])
            assert orec["timesteps"] == rec["timesteps"]
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)

    finish(OUT, manifest, diffs, verify)


if __name__ == "__main__":
    main()
