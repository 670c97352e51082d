#!/usr/bin/env python3
"""Regenerate easel's img2img test fixtures under tests/fixtures/img2img/.

Run from the repository root (after tools/make_fixtures.py has made tests/fixtures/models/):

    .venv-tools/bin/python tools/make_img2img_fixtures.py            # everything
    .venv-tools/bin/python tools/make_img2img_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

It rebuilds the PyTorch modules of the tiny models from the same seeds as make_fixtures.py
(its own builder, imported, not copied), checks that they compute the same function as the
committed ONNX files, then writes:

  img2img/init-64.png, init-80x48.png     deterministic init pictures (numpy + PIL)
  img2img/models/sd1-tiny-latent-sample/  sd1-tiny with a legacy `latent_sample` vae_encoder
  img2img/noise/<case>.npy                every N(0,1) draw of the run, in draw order
  img2img/images/<case>.png               diffusers' StableDiffusionImg2ImgPipeline output
  img2img/manifest.json                   the cases + the diffusers facts easel must mirror

See tools/README.md ("make_img2img_fixtures.py") for what each field means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets HF_HUB_OFFLINE etc. on import)

import numpy as np  # noqa: E402

ROOT = mf.ROOT
FIX = mf.FIX
OUT = FIX / "img2img"
NEG = "blurry, low quality"
VARIANT = "sd1-tiny-latent-sample"

# scheduler module (where `randn_tensor` was imported) per sampler
SCHED_MODULE = {
    "euler": "diffusers.schedulers.scheduling_euler_discrete",
    "euler_a": "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "ddim": "diffusers.schedulers.scheduling_ddim",
    "pndm": "diffusers.schedulers.scheduling_pndm",
    "dpmpp_2m": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "dpmpp_2m_karras": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "lcm": "diffusers.schedulers.scheduling_lcm",
    "heun": "diffusers.schedulers.scheduling_heun_discrete",
}
PIPE_MODULE = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img"
VAE_MODULE = "diffusers.models.autoencoders.vae"  # DiagonalGaussianDistribution.sample
# how add_noise mixes the clean latent x0 and the noise n
SIGMA_FAMILY = {"euler", "euler_a", "heun"}  # x0 + sigma[begin_index] * n
DPM_FAMILY = {"dpmpp_2m", "dpmpp_2m_karras"}  # alpha_t x0 + sigma_t n from sigma[begin_index]
ALPHA_FAMILY = {"ddim", "pndm", "lcm"}  # sqrt(acp[t]) x0 + sqrt(1 - acp[t]) n, t = latent_timestep


def log(*a):
    print(*a, flush=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def write_png(path: Path, arr: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, optimize=False)


# --------------------------------------------------------------------------------------
# noise served from numpy, in draw order
# --------------------------------------------------------------------------------------


class NoiseTape:
    """Replaces `randn_tensor` in several modules at once. Every draw is served from float32
    N(0,1) numpy noise (fresh from `rng`, or replayed from `replay`) and recorded in order,
    with the label of the module that asked for it."""

    def __init__(self, modules: dict, rng=None, replay=None):
        import importlib

        self.mods = {label: importlib.import_module(m) for label, m in modules.items()}
        self.rng = rng
        self.replay = list(replay) if replay is not None else None
        self.drawn, self.labels = [], []

    def _server(self, label):
        def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
            import torch

            shape = tuple(shape)
            if self.replay is not None:
                assert len(self.drawn) < len(self.replay), f"more draws than recorded ({label})"
                a = self.replay[len(self.drawn)]
                assert a.shape == shape, (a.shape, shape)
            else:
                a = self.rng.standard_normal(shape, dtype=np.float32)
            self.drawn.append(a)
            self.labels.append(label)
            return torch.from_numpy(a.copy()).to(device=device or "cpu", dtype=dtype or torch.float32)

        return randn_tensor

    def __enter__(self):
        self.orig = {}
        for label, mod in self.mods.items():
            if mod.__name__ in {m.__name__ for m in self.orig.values()}:
                continue
            if not hasattr(mod, "randn_tensor"):  # e.g. scheduling_pndm never draws
                continue
            self.orig[label] = mod
            mod._easel_orig_randn = mod.randn_tensor
            mod.randn_tensor = self._server(label)
        return self

    def __exit__(self, *a):
        for mod in self.orig.values():
            mod.randn_tensor = mod._easel_orig_randn
            del mod._easel_orig_randn


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------


def build_cases():
    cases = []

    def add(name, model, sampler, strength, cfg=7.5, steps=10, init="init-64.png", prompt="a watercolor of a sunny garden", notes=""):
        cases.append(
            dict(
                name=name, model=model, prompt=prompt, negative_prompt=NEG if cfg > 1 else "", init_image=init, steps=steps,
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


def expected_step_draws(sampler: str, n_run: int) -> int:
    if sampler == "euler_a":
        return n_run  # one per step, the last included
    if sampler == "lcm":
        return max(n_run - 1, 0)  # none after the scheduler's last step
    return 0  # euler/heun (s_churn 0), ddim/dpm (eta 0 / deterministic), pndm


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
    s = mf.ort_session(mdir / "vae_encoder" / "model.onnx")
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


def add_noise_facts(sampler: str, sched, begin_index, latent_timestep):
    """The coefficients add_noise used: noisy = a * x0 + b * noise."""
    import torch

    if sampler in SIGMA_FAMILY:
        sigma = float(sched.sigmas[begin_index])
        return dict(formula="x0 + sigma * noise, sigma = sigmas[begin_index]", sigma=sigma, a=1.0, b=sigma)
    if sampler in DPM_FAMILY:
        sigma = sched.sigmas[begin_index]
        alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sigma)
        return dict(
            formula="alpha_t * x0 + sigma_t * noise, sigma = sigmas[begin_index], alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma * alpha_t",
            sigma=float(sigma), a=float(alpha_t), b=float(sigma_t),
        )
    acp = sched.alphas_cumprod[int(latent_timestep)]
    return dict(
        formula="sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise, t = latent_timestep, acp = alphas_cumprod",
        alphas_cumprod_t=float(acp), a=float(acp**0.5), b=float((1 - acp) ** 0.5),
    )


def run_case(pipe, case, init_pil, rng=None, replay=None, argmax=False):
    """One img2img run with every random draw served by a NoiseTape. Returns (image float
    [H,W,3], tape, facts)."""
    import importlib

    import torch

    pmod = importlib.import_module(PIPE_MODULE)
    sched_file = model_dir(case["model"]) / "scheduler" / "scheduler_config.json"
    pipe.scheduler = mf.make_scheduler(case["sampler"], sched_file)
    facts = {}

    orig_get_timesteps = pipe.get_timesteps

    def get_timesteps(num_inference_steps, strength, device):
        facts["full_timesteps"] = [float(t) for t in pipe.scheduler.timesteps]
        ts, n = orig_get_timesteps(num_inference_steps, strength, device)
        facts["timesteps"] = [float(t) for t in ts]
        facts["n_run"] = n
        facts["begin_index"] = getattr(pipe.scheduler, "begin_index", None)
        return ts, n

    orig_add_noise = pipe.scheduler.add_noise

    def add_noise(x0, noise, t):
        y = orig_add_noise(x0, noise, t)
        facts["latent_timestep"] = [float(v) for v in t]
        facts["add_noise_io"] = (x0.clone(), noise.clone(), y.clone())
        return y

    pipe.get_timesteps = get_timesteps
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-ort", action="store_true", help="skip the ORT-pipeline-vs-PyTorch comparison")
    args = ap.parse_args()

    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if OUT.exists():
        shutil.rmtree(OUT)
    for sub in ("noise", "images"):
        (OUT / sub).mkdir(parents=True)

    # 1. the PyTorch modules, rebuilt from make_fixtures' seeds, checked against the ONNX files
    tmp = tempfile.TemporaryDirectory(prefix="easel-img2img-")
    work = Path(tmp.name)
    ddirs, verify = {}, {}
    for name, spec in mf.MODEL_SPECS.items():
        log(f"== rebuild {name} (seed {spec['seed']})")
        pipe = mf.build_pipeline(name, spec, FIX / "tokenizer" / "clip-tiny")
        ddir = work / name
        pipe.save_pretrained(ddir)
        mf.write_json(ddir / "scheduler" / "scheduler_config.json", spec["scheduler"])
        d = mf.verify_model(name, ddir, FIX / "models" / name)
        assert max(d.values()) < 1e-4, f"rebuilt {name} does not match the committed ONNX: {d}"
        verify[name] = d
        ddirs[name] = ddir
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
        write_png(OUT / fname, init_picture(w, h))

    # 3. references
    pt_pipes, ort_pipes = {}, {}

    def pt_pipe(model):
        base = "sd1-tiny" if model.startswith("sd1-tiny") else model
        if base not in pt_pipes:
            p = StableDiffusionImg2ImgPipeline.from_pretrained(ddirs[base], safety_checker=None, requires_safety_checker=False)
            p.set_progress_bar_config(disable=True)
            pt_pipes[base] = p
        return pt_pipes[base]

    def ort_pipe(model):
        from optimum.onnxruntime import ORTStableDiffusionImg2ImgPipeline

        if model not in ort_pipes:
            p = ORTStableDiffusionImg2ImgPipeline.from_pretrained(model_dir(model), provider="CPUExecutionProvider")
            p.set_progress_bar_config(disable=True)
            ort_pipes[model] = p
        return ort_pipes[model]

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
        order = sched.order
        init_timestep = min(int(case["steps"] * case["strength"]), case["steps"])
        t_start = max(case["steps"] - init_timestep, 0)
        assert facts["timesteps"] == facts["full_timesteps"][t_start * order :]
        has_begin = hasattr(sched, "set_begin_index")
        assert facts["begin_index"] == (t_start * order if has_begin else None), (facts["begin_index"], t_start, order)
        lt = facts["latent_timestep"]
        assert lt == facts["timesteps"][:1], (lt, facts["timesteps"][:1])
        an = add_noise_facts(case["sampler"], sched, facts["begin_index"], lt[0])
        x0, n, y = facts["add_noise_io"]
        assert torch.allclose(y, an["a"] * x0 + an["b"] * n, atol=1e-5), case["name"]

        pil = mf.to_pil(img)
        if idx == 0:  # output_type="np" + numpy_to_pil is what output_type="pil" does
            pipe.scheduler = mf.make_scheduler(case["sampler"], model_dir(case["model"]) / "scheduler" / "scheduler_config.json")
            with NoiseTape({"vae_sample": VAE_MODULE, "add_noise": PIPE_MODULE}, replay=tape.drawn), torch.no_grad():
                direct = pipe(prompt=case["prompt"], image=init_pil, strength=case["strength"], num_inference_steps=case["steps"],
                              guidance_scale=case["guidance_scale"], negative_prompt=case["negative_prompt"] or None, output_type="pil").images[0]
            assert np.array_equal(np.asarray(direct), np.asarray(pil)), "np->pil path differs from output_type=pil"

        noise_path = f"img2img/noise/{case['name']}.npy"
        np.save(FIX / noise_path, np.stack(tape.drawn).astype(np.float32))
        img_path = f"img2img/images/{case['name']}.png"
        pil.save(FIX / img_path, optimize=False)
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
            opil = np.asarray(mf.to_pil(oimg)).astype(np.float32)
            d8 = np.abs(opil - np.asarray(pil).astype(np.float32))
            df = np.abs(oimg.astype(np.float64) - img.astype(np.float64)) * 255.0
            rec = dict(name=case["name"], sampler=case["sampler"], mean_u8=float(d8.mean()), max_u8=float(d8.max()), mean_f=float(df.mean()), max_f=float(df.max()))
            diffs.append(rec)
            line += f"  ORT-vs-PT u8 mean {rec['mean_u8']:.4f} max {rec['max_u8']:.0f}  float*255 mean {rec['mean_f']:.5f} max {rec['max_f']:.4f}"
        log(line)

    mf.write_json(OUT / "manifest.json", manifest)
    tmp.cleanup()

    log("== ONNX vs rebuilt PyTorch (max abs): " + json.dumps(verify))
    if diffs:
        log("== ORT vs PyTorch (markdown)")
        log("| case | sampler | u8 mean | u8 max | float×255 mean | float×255 max |")
        log("|---|---|---|---|---|---|")
        for r in diffs:
            log(f"| {r['name']} | {r['sampler']} | {r['mean_u8']:.4f} | {r['max_u8']:.0f} | {r['mean_f']:.5f} | {r['max_f']:.4f} |")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    known = {sha(p) for p in (FIX / "models").rglob("*") if p.is_file()}
    new = {}
    for p in OUT.rglob("*"):
        if p.is_file() and sha(p) not in known:
            new[sha(p)] = p.stat().st_size
    log(f"== img2img fixtures: {total/1e6:.3f} MB on disk, {sum(new.values())/1e6:.3f} MB of content not already under models/")


if __name__ == "__main__":
    main()
