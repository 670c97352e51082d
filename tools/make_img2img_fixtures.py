#!/usr/bin/env python3
"""Regenerate easel's img2img test fixtures under tests/fixtures/img2img/.

Run from the repository root (after tools/make_fixtures.py has made tests/fixtures/models/):

    .venv-tools/bin/python tools/make_img2img_fixtures.py            # everything
    .venv-tools/bin/python tools/make_img2img_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

It rebuilds the PyTorch modules of the tiny models from the same seeds as make_fixtures.py
(common.py's builder), checks that they compute the same function as the committed ONNX
files, then writes:

  img2img/init-64.png, init-80x48.png     deterministic init pictures (numpy + PIL)
  img2img/models/sd1-tiny-latent-sample/  sd1-tiny with a legacy `latent_sample` vae_encoder
  img2img/noise/<case>.npy                every N(0,1) draw of the run, in draw order
  img2img/images/<case>.png               diffusers' StableDiffusionImg2ImgPipeline output
  img2img/manifest.json                   the cases + the diffusers facts easel must mirror

See tools/README.md ("make_img2img_fixtures.py") for what each field means.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, MODEL_SPECS, NEGATIVE, SCHED_MODULE, VAE_MODULE, NoiseTape, add_noise_facts, cached_pipelines,
    check_strength_schedule, expected_step_draws, finish, fixture_args, fresh_dir, log, make_scheduler,
    ort_session, ort_vs_pt, rebuild_and_verify, record_get_timesteps, save_png, scratch_dir, to_pil,
    torch_setup,
)

OUT = FIX / "img2img"
VARIANT = "sd1-tiny-latent-sample"
PIPE_MODULE = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img"


# --------------------------------------------------------------------------------------
# init pictures
# --------------------------------------------------------------------------------------


def init_picture(w: int, h: int) -> np.ndarray:
    """A smooth gradient plus a solid disc and a solid rectangle, uint8 [h, w, 3].
    Integer arithmetic only, so it is the same everywhere."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    img = np.empty((h, w, 3), dtype=np.int64)
    img[..., 0] = 40 + (x * 180) // max(w - 1, 1)  # red grows to the right
    img[..., 1] = 30 + (y * 190) // max(h - 1, 1)  # green grows downwards
    img[..., 2] = 200 - ((x + y) * 150) // max(w + h - 2, 1)  # blue fades along the diagonal
    # a solid warm disc, upper left
    cx, cy, r = w // 3, h // 3, min(w, h) // 5
    disc = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    img[disc] = (235, 200, 40)
    # a solid dark rectangle, lower right
    rect = (x >= (w * 5) // 8) & (x < (w * 7) // 8) & (y >= (h * 5) // 8) & (y < (h * 7) // 8)
    img[rect] = (20, 30, 90)
    return img.astype(np.uint8)


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------


def build_cases():
    cases = []

    def add(name, model, sampler, strength, cfg=7.5, steps=10, init="init-64.png", prompt="a watercolor of a sunny garden", notes=""):
        cases.append(
            dict(
                name=name, model=model, prompt=prompt, negative_prompt=NEGATIVE if cfg > 1 else "", init_image=init, steps=steps,
                strength=strength, guidance_scale=cfg, sampler=sampler, notes=notes,
            )
        )

    for s in ["euler", "euler_a", "ddim", "pndm", "dpmpp_2m", "dpmpp_2m_karras", "lcm", "heun"]:
        add(f"sd1-{s}-s0.6", "sd1-tiny", s, 0.6)
    add("sd1-euler-s0.3", "sd1-tiny", "euler", 0.3, prompt="an oil painting of a harbour")
    add("sd1-euler-s1.0", "sd1-tiny", "euler", 1.0, prompt="an oil painting of a harbour",
        notes="strength 1.0: the whole schedule runs, but the start is x0 + sigma_max * noise (sigma_max ~14.6), not pure noise: the image still leaks in")
    add("sd1-ddim-nocfg-s0.5", "sd1-tiny", "ddim", 0.5, cfg=1.0, prompt="a red cube on a table")
    add("sd1-heun-s0.75", "sd1-tiny", "heun", 0.75, prompt="a snowy mountain village")
    add("sd2-euler-s0.6", "sd2-tiny-v", "euler", 0.6, prompt="a watercolor painting of a fox in the snow")
    add("sd2-ddim-s0.6", "sd2-tiny-v", "ddim", 0.6, prompt="a watercolor painting of a fox in the snow")
    add("sd1-dpmpp_2m-80x48-s0.6", "sd1-tiny", "dpmpp_2m", 0.6, init="init-80x48.png", prompt="a wide landscape, mountains and a lake")
    add("sd1-lcm-4step-s0.5", "sd1-tiny", "lcm", 0.5, steps=4, prompt="a lighthouse at dusk")
    add(f"{VARIANT}-euler-s0.6", VARIANT, "euler", 0.6, prompt="a bowl of fruit, still life",
        notes="legacy vae_encoder whose output `latent_sample` is the latent itself (here the distribution mean): no VAE sampling draw; "
              "diffusers run with retrieve_latents(sample_mode='argmax') (= latent_dist.mode() = mean); latent = scaling_factor * latent_sample")
    return cases


def model_dir(model: str) -> Path:
    return OUT / "models" / model if model == VARIANT else FIX / "models" / model


def model_rel(model: str) -> str:
    return model_dir(model).relative_to(FIX).as_posix()


# --------------------------------------------------------------------------------------
# legacy `latent_sample` vae_encoder
# --------------------------------------------------------------------------------------


def make_latent_sample_variant(base: Path, out: Path):
    import onnx
    from onnx import TensorProto, helper

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    p = out / "vae_encoder" / "model.onnx"
    m = onnx.load(str(p))
    g = m.graph
    assert [o.name for o in g.output] == ["latent_parameters"], [o.name for o in g.output]
    old = g.output[0]
    dims = [d.dim_param if d.dim_param else d.dim_value for d in old.type.tensor_type.shape.dim]
    assert dims[1] == 8, dims
    dims[1] = 4
    for name, vals in (("easel_fixture_starts", [0]), ("easel_fixture_ends", [4]), ("easel_fixture_axes", [1])):
        g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], vals))
    # latent_parameters = mean ‖ logvar on axis 1; keep the mean (deterministic "sample")
    g.node.append(
        helper.make_node(
            "Slice", ["latent_parameters", "easel_fixture_starts", "easel_fixture_ends", "easel_fixture_axes"], ["latent_sample"],
            name="easel_fixture_mean",
        )
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, dims))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(p))
    log(f"== variant {VARIANT}: vae_encoder output latent_sample {dims}")


def verify_latent_sample_variant(ddir: Path, mdir: Path) -> float:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(ddir / "vae").eval()
    rng = np.random.default_rng(4321)
    x = rng.uniform(-1, 1, size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = vae.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
    s = ort_session(mdir / "vae_encoder" / "model.onnx")
    assert [o.name for o in s.get_outputs()] == ["latent_sample"]
    o = s.run(None, {"sample": x})[0]
    assert o.shape == (1, 4, 8, 8), o.shape
    d = float(np.abs(o - ref).max())
    log(f"  ORT vs PyTorch max abs diff ({VARIANT}): vae_encoder latent_sample vs latent_dist.mean {d:.2e}")
    assert d < 1e-4, d
    return d


# --------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------


def run_case(pipe, case, init_pil, rng=None, replay=None, argmax=False):
    """One img2img run with every random draw served by a NoiseTape. Returns (image float
    [H,W,3], tape, facts)."""
    import importlib

    import torch

    pmod = importlib.import_module(PIPE_MODULE)
    sched_file = model_dir(case["model"]) / "scheduler" / "scheduler_config.json"
    pipe.scheduler = make_scheduler(case["sampler"], sched_file)
    facts = {}
    record_get_timesteps(pipe, facts)

    orig_add_noise = pipe.scheduler.add_noise

    def add_noise(x0, noise, t):
        y = orig_add_noise(x0, noise, t)
        facts["latent_timestep"] = [float(v) for v in t]
        facts["add_noise_io"] = (x0.clone(), noise.clone(), y.clone())
        return y

    pipe.scheduler.add_noise = add_noise
    orig_retrieve = pmod.retrieve_latents
    if argmax:
        pmod.retrieve_latents = lambda out, generator=None, sample_mode="sample": orig_retrieve(out, generator, "argmax" if hasattr(out, "latent_dist") else sample_mode)
    tape = NoiseTape({"vae_sample": VAE_MODULE, "add_noise": PIPE_MODULE, "step": SCHED_MODULE[case["sampler"]]}, rng=rng, replay=replay)
    try:
        with tape, torch.no_grad():
            img = pipe(
                prompt=case["prompt"],
                image=init_pil,
                strength=case["strength"],
                num_inference_steps=case["steps"],
                guidance_scale=case["guidance_scale"],
                negative_prompt=case["negative_prompt"] or None,
                output_type="np",
            ).images[0]
    finally:
        del pipe.get_timesteps
        pmod.retrieve_latents = orig_retrieve
    return img, tape, facts


def check_draws(case, tape, facts, vae_draws):
    n_step = expected_step_draws(case["sampler"], facts["n_run"])
    want = ["vae_sample"] * vae_draws + ["add_noise"] + ["step"] * n_step
    assert tape.labels == want, (case["name"], tape.labels, want)
    return want


def main():
    args = fixture_args(__doc__, skip_ort=True).parse_args()

    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    torch_setup()
    fresh_dir(OUT, ("noise", "images"))

    # 1. the PyTorch modules, rebuilt from make_fixtures' seeds, checked against the ONNX files
    work = scratch_dir("easel-img2img-")
    ddirs, verify = {}, {}
    for name in MODEL_SPECS:
        _, ddirs[name], verify[name] = rebuild_and_verify(name, work)
    make_latent_sample_variant(FIX / "models" / "sd1-tiny", OUT / "models" / VARIANT)
    verify[VARIANT] = verify_latent_sample_variant(ddirs["sd1-tiny"], OUT / "models" / VARIANT)
    (OUT / "models" / VARIANT / "README.md").write_text(
        "# sd1-tiny-latent-sample\n\n"
        "`sd1-tiny` with only `vae_encoder/model.onnx` replaced: its single output is `latent_sample`\n"
        "float [batch_size, 4, sample_height / 8, sample_width / 8], the form of the legacy diffusers\n"
        "ONNX export (which sampled the latent inside the graph). This fixture is deterministic: the\n"
        "graph is sd1-tiny's encoder followed by a `Slice` keeping channels 0..4 of\n"
        "`latent_parameters`, i.e. the distribution mean.\n\n"
        "easel treats `latent_sample` as the latent itself: no sampling, no noise draw; the init\n"
        "latent is `scaling_factor * latent_sample` (as optimum's ORT pipeline does: it maps\n"
        "`latent_sample` to `latents`, which diffusers' `retrieve_latents` returns unchanged).\n"
        "Made by tools/make_img2img_fixtures.py.\n",
        encoding="utf-8",
    )

    # 2. init pictures
    inits = {"init-64.png": (64, 64), "init-80x48.png": (80, 48)}
    for fname, (w, h) in inits.items():
        save_png(OUT / fname, init_picture(w, h), "RGB")

    # 3. references
    # the variant computes sd1-tiny's function: its PyTorch pipeline is the reference
    pt_pipe, ort_pipe = cached_pipelines(
        StableDiffusionImg2ImgPipeline, lambda model: ddirs["sd1-tiny" if model.startswith("sd1-tiny") else model],
        "ORTStableDiffusionImg2ImgPipeline", model_dir,
    )

    manifest, diffs = [], []
    for idx, case in enumerate(build_cases()):
        init_pil = Image.open(OUT / case["init_image"]).convert("RGB")
        w, h = init_pil.size
        argmax = case["model"] == VARIANT
        pipe = pt_pipe(case["model"])
        img, tape, facts = run_case(pipe, case, init_pil, rng=np.random.default_rng(7000 + idx), argmax=argmax)
        labels = check_draws(case, tape, facts, vae_draws=0 if argmax else 1)
        f = pipe.vae_scale_factor
        assert all(a.shape == (1, 4, h // f, w // f) for a in tape.drawn)

        sched = pipe.scheduler
        init_timestep, t_start, order = check_strength_schedule(sched, case["steps"], case["strength"], facts)
        lt = facts["latent_timestep"]
        assert lt == facts["timesteps"][:1], (lt, facts["timesteps"][:1])
        an = add_noise_facts(case["sampler"], sched, facts["begin_index"], lt[0])
        x0, n, y = facts["add_noise_io"]
        assert torch.allclose(y, an["a"] * x0 + an["b"] * n, atol=1e-5), case["name"]

        pil = to_pil(img)
        if idx == 0:  # output_type="np" + numpy_to_pil is what output_type="pil" does
            pipe.scheduler = make_scheduler(case["sampler"], model_dir(case["model"]) / "scheduler" / "scheduler_config.json")
            with NoiseTape({"vae_sample": VAE_MODULE, "add_noise": PIPE_MODULE}, replay=tape.drawn), torch.no_grad():
                direct = pipe(prompt=case["prompt"], image=init_pil, strength=case["strength"], num_inference_steps=case["steps"],
                              guidance_scale=case["guidance_scale"], negative_prompt=case["negative_prompt"] or None, output_type="pil").images[0]
            assert np.array_equal(np.asarray(direct), np.asarray(pil)), "np->pil path differs from output_type=pil"

        noise_path = f"img2img/noise/{case['name']}.npy"
        np.save(FIX / noise_path, np.stack(tape.drawn).astype(np.float32))
        img_path = f"img2img/images/{case['name']}.png"
        save_png(FIX / img_path, pil)
        assert pil.size == (w, h)

        entry = dict(
            name=case["name"],
            model=model_rel(case["model"]),
            prompt=case["prompt"],
            negative_prompt=case["negative_prompt"],
            init_image=f"img2img/{case['init_image']}",
            width=w,
            height=h,
            steps=case["steps"],
            strength=case["strength"],
            guidance_scale=case["guidance_scale"],
            sampler=case["sampler"],
            noise=noise_path,
            noise_draws=labels,
            image=img_path,
            init_timestep=init_timestep,
            t_start=t_start,
            scheduler_order=order,
            begin_index=facts["begin_index"],
            timesteps=facts["timesteps"],
            full_timesteps=facts["full_timesteps"],
            latent_timestep=lt[0],
            add_noise=an,
            notes=case["notes"],
        )
        manifest.append(entry)

        line = f"  {case['name']:<34} draws {len(labels):2d}  run {facts['n_run']:2d} steps  std {np.asarray(pil).astype(np.float32).std():5.1f}"
        if not args.skip_ort:
            oimg, otape, ofacts = run_case(ort_pipe(case["model"]), case, init_pil, replay=tape.drawn)
            assert otape.labels == labels, (otape.labels, labels)
            assert ofacts["timesteps"] == facts["timesteps"]
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)

    finish(OUT, manifest, diffs, verify)


if __name__ == "__main__":
    main()
