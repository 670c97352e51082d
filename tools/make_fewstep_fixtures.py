#!/usr/bin/env python3
"""Few-step (LCM-distilled / SD-Turbo-shaped) fixtures under tests/fixtures/fewstep/.

Run from the repository root (needs tests/fixtures/ from make_fixtures.py):

    .venv-tools/bin/python tools/make_fewstep_fixtures.py            # everything
    .venv-tools/bin/python tools/make_fewstep_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

It rebuilds sd1-tiny's PyTorch modules with make_fixtures' own builder (imported, not copied)
and checks them against the committed ONNX files, then writes:

  models/lcm-tiny/    sd1-tiny's text encoder / VAE / tokenizer files (copied, byte-identical),
                      a UNet2DConditionModel with time_cond_proj_dim=256 (seeded random weights,
                      exported with optimum), LCM_Dreamshaper_v7's scheduler file
  models/turbo-tiny/  sd1-tiny with only scheduler/scheduler_config.json (SD-Turbo's
                      EulerDiscreteScheduler, "trailing") and model_index.json changed
  manifest.json, images/, noise/, timestep_cond/  references from diffusers' PyTorch
                      StableDiffusionPipeline, each also run through optimum's ORT pipeline

See tools/README.md ("make_fewstep_fixtures.py") for what each file is and the measured diffs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets HF_HUB_OFFLINE etc. on import)

import numpy as np  # noqa: E402

FIX = mf.FIX
OUT = FIX / "fewstep"
SD1 = FIX / "models" / "sd1-tiny"

TIME_COND_PROJ_DIM = 256
LCM_UNET_SEED = 11

# SimianLuo/LCM_Dreamshaper_v7 scheduler/scheduler_config.json, reproduced from memory (no hub
# access here). set_alpha_to_one is true there; LCM never reads final_alpha_cumprod (its last
# step uses prev_timestep = t), so it does not change any output.
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    "_diffusers_version": "0.22.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
# stabilityai/sd-turbo scheduler/scheduler_config.json, reproduced from memory.
TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

EMBEDDING_FORMULA = (
    "timestep_cond = get_guidance_scale_embedding(w, embedding_dim=unet.config.time_cond_proj_dim) with "
    "w = torch.tensor(guidance_scale - 1) (float32, repeated over the batch); inside: w = w * 1000.0; "
    "half = dim // 2; e = log(10000) / (half - 1); freqs = exp(arange(half) * -e); "
    "x = w[:, None] * freqs[None, :]; emb = cat([sin(x), cos(x)], dim=1) (sin first, then cos; "
    "zero-padded by one if dim is odd), all float32. "
    "diffusers 0.35.2 pipelines/stable_diffusion/pipeline_stable_diffusion.py lines 716-745 "
    "(get_guidance_scale_embedding, copied from the LCM pipeline), called at lines 1019-1025; "
    "with time_cond_proj_dim set, do_classifier_free_guidance is False (line 763-764: "
    "guidance_scale > 1 and time_cond_proj_dim is None): one UNet call per step on the prompt "
    "embedding only, the negative prompt is ignored, and timestep_cond is fed at every step."
)


def log(*a):
    print(*a, flush=True)


def embedding_np(gs: float, dim: int) -> np.ndarray:
    """The same float32 arithmetic as diffusers' get_guidance_scale_embedding."""
    w = np.float32(np.float32(gs - 1) * np.float32(1000.0))
    half = dim // 2
    e = np.float32(np.log(np.float32(10000.0))) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -e).astype(np.float32)
    x = (w * freqs)[None, :].astype(np.float32)
    return np.concatenate([np.sin(x), np.cos(x)], axis=1).astype(np.float32)


def embedding_np64(gs: float, dim: int) -> np.ndarray:
    """The formula in float64 (rounded to float32 at the end)."""
    half = dim // 2
    x = (gs - 1) * 1000.0 * np.exp(np.arange(half) * -(np.log(10000.0) / (half - 1)))
    return np.concatenate([np.sin(x), np.cos(x)])[None, :].astype(np.float32)


def build_lcm_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(LCM_UNET_SEED)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=False,
        time_cond_proj_dim=TIME_COND_PROJ_DIM,
    ).eval()
    with torch.no_grad():  # ~unit-variance output, as make_fixtures does
        unet.conv_out.weight.mul_(3.0)
        unet.conv_out.bias.mul_(3.0)
    return unet


def fix_name_or_path(folder: Path, name: str):
    for p in sorted(folder.rglob("*.json")):
        d = json.loads(p.read_text())
        if isinstance(d, dict) and "_name_or_path" in d:
            sub = p.parent.relative_to(folder).as_posix()
            d["_name_or_path"] = f"easel-fixtures/{name}" + ("" if sub == "." else f"/{sub}")
            mf.write_json(p, d)


def make_lcm_model(sd1_pipe, work: Path):
    """Save + export the LCM pipeline; assemble models/lcm-tiny from sd1-tiny's files plus the
    exported unet/, model_index.json and the original scheduler file."""
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=sd1_pipe.vae,
        text_encoder=sd1_pipe.text_encoder,
        tokenizer=sd1_pipe.tokenizer,
        unet=build_lcm_unet(),
        scheduler=diffusers.LCMScheduler.from_config(dict(LCM_SCHEDULER)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ddir = work / "diffusers" / "lcm-tiny"
    pipe.save_pretrained(ddir)
    mf.write_json(ddir / "scheduler" / "scheduler_config.json", LCM_SCHEDULER)
    exp = work / "onnx" / "lcm-tiny"
    cmd = [sys.executable, "-m", "optimum.exporters.onnx", "--model", str(ddir), "--task", "text-to-image", str(exp)]
    log("  $ " + " ".join(cmd[1:]))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stdout[-5000:], r.stderr[-5000:])
        raise SystemExit("optimum export of lcm-tiny failed")
    exported_sched = json.loads((exp / "scheduler" / "scheduler_config.json").read_text())
    fix_name_or_path(exp, "lcm-tiny")
    same = {}
    for part in ("text_encoder", "vae_decoder", "vae_encoder"):
        same[part] = (exp / part / "model.onnx").read_bytes() == (SD1 / part / "model.onnx").read_bytes()
    log(f"  exported text encoder / VAE ONNX byte-identical to sd1-tiny's: {same}")

    out = OUT / "models" / "lcm-tiny"
    shutil.copytree(SD1, out)
    shutil.rmtree(out / "unet")
    shutil.copytree(exp / "unet", out / "unet")
    shutil.copy2(exp / "model_index.json", out / "model_index.json")
    mf.write_json(out / "scheduler" / "scheduler_config.json", LCM_SCHEDULER)

    # ONNX UNet vs PyTorch UNet, with timestep_cond
    s = mf.ort_session(out / "unet" / "model.onnx")
    rng = np.random.default_rng(4242)
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    ehs = rng.standard_normal((2, mf.MAX_LEN, 32), dtype=np.float32)
    tc = np.concatenate([embedding_np(8.5, TIME_COND_PROJ_DIM), embedding_np(2.0, TIME_COND_PROJ_DIM)])
    with torch.no_grad():
        ref = pipe.unet(torch.from_numpy(sample), torch.tensor(759.0), torch.from_numpy(ehs), timestep_cond=torch.from_numpy(tc)).sample.numpy()
        ref0 = pipe.unet(torch.from_numpy(sample), torch.tensor(759.0), torch.from_numpy(ehs), timestep_cond=torch.from_numpy(np.zeros_like(tc))).sample.numpy()
    o = s.run(None, {"sample": sample, "timestep": np.array(759.0, dtype=np.float32), "encoder_hidden_states": ehs, "timestep_cond": tc})[0]
    d = float(np.abs(o - ref).max())
    cond_effect = float(np.abs(ref - ref0).max())
    log(f"  ORT vs PyTorch max abs diff (lcm-tiny unet, with timestep_cond): {d:.2e}; timestep_cond effect {cond_effect:.3f}")
    assert d < 1e-4, d
    return ddir, exported_sched, d, cond_effect, same


def make_turbo_model():
    out = OUT / "models" / "turbo-tiny"
    shutil.copytree(SD1, out)
    mi = json.loads((out / "model_index.json").read_text())
    mi["_name_or_path"] = "easel-fixtures/turbo-tiny"
    mi["scheduler"] = ["diffusers", TURBO_SCHEDULER["_class_name"]]
    mf.write_json(out / "model_index.json", mi)
    mf.write_json(out / "scheduler" / "scheduler_config.json", TURBO_SCHEDULER)


def build_cases():
    cases = []

    def add(name, model, sampler, steps, cfg, prompt, negative="", notes=""):
        cases.append(dict(name=name, model=model, sampler=sampler, steps=steps, guidance_scale=cfg, prompt=prompt,
                          negative_prompt=negative, width=64, height=64, notes=notes))

    for steps in (1, 2, 4):
        for cfg in (8.5, 1.0):
            add(f"lcm-{steps}step-g{cfg}", "lcm-tiny", "lcm", steps, cfg, "a photograph of an astronaut riding a horse")
    for steps in (1, 2, 4):
        add(f"turbo-{steps}step", "turbo-tiny", "euler", steps, 0.0, "a red cube on a table")
    add("turbo-2step-cfg1.5", "turbo-tiny", "euler", 2, 1.5, "a red cube on a table", negative="blurry, low quality")
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-ort", action="store_true", help="skip the ORT-pipeline-vs-PyTorch comparison")
    args = ap.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if OUT.exists():
        shutil.rmtree(OUT)
    for sub in ("models", "noise", "images", "timestep_cond"):
        (OUT / sub).mkdir(parents=True)

    tmp = tempfile.TemporaryDirectory(prefix="easel-fewstep-")
    work = Path(tmp.name)

    # 1. sd1-tiny rebuilt from make_fixtures' seed, checked against the committed ONNX
    spec = mf.MODEL_SPECS["sd1-tiny"]
    log(f"== rebuild sd1-tiny (seed {spec['seed']})")
    sd1 = mf.build_pipeline("sd1-tiny", spec, FIX / "tokenizer" / "clip-tiny")
    sd1_dir = work / "diffusers" / "sd1-tiny"
    sd1.save_pretrained(sd1_dir)
    mf.write_json(sd1_dir / "scheduler" / "scheduler_config.json", spec["scheduler"])
    v = mf.verify_model("sd1-tiny", sd1_dir, SD1)
    assert max(v.values()) < 1e-4, f"rebuilt sd1-tiny does not match the committed ONNX: {v}"

    # 2. models
    log("== model lcm-tiny")
    lcm_dir, exported_sched, unet_diff, cond_effect, same = make_lcm_model(sd1, work)
    sig = mf.onnx_signature(OUT / "models" / "lcm-tiny" / "unet" / "model.onnx")
    tc_in = [i for i in sig["inputs"] if i["name"] == "timestep_cond"]
    assert tc_in and tc_in[0]["dtype"] == "float" and tc_in[0]["shape"][1:] == [TIME_COND_PROJ_DIM], sig
    log("  unet: (" + ", ".join(f"{i['name']}:{i['dtype']}{i['shape']}" for i in sig["inputs"]) + ") -> ("
        + ", ".join(f"{o['name']}:{o['dtype']}{o['shape']}" for o in sig["outputs"]) + ")")
    log("  optimum re-saved scheduler (overwritten): " + json.dumps(exported_sched, sort_keys=True))
    log("== model turbo-tiny")
    make_turbo_model()

    # 3. references
    pt_pipes, ort_pipes = {}, {}
    pt_dirs = {"lcm-tiny": lcm_dir, "turbo-tiny": sd1_dir}

    def pt_pipe(model):
        if model not in pt_pipes:
            p = StableDiffusionPipeline.from_pretrained(pt_dirs[model], safety_checker=None, requires_safety_checker=False)
            p.set_progress_bar_config(disable=True)
            pt_pipes[model] = p
        return pt_pipes[model]

    def ort_pipe(model):
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        if model not in ort_pipes:
            p = ORTStableDiffusionPipeline.from_pretrained(OUT / "models" / model, provider="CPUExecutionProvider")
            p.set_progress_bar_config(disable=True)
            ort_pipes[model] = p
        return ort_pipes[model]

    def instrumented(pipe, case, noise, tape_kwargs):
        """run_pipe, recording what the UNet received and the guidance embedding."""
        rec = {"unet_batch": [], "unet_t": [], "timestep_cond": None, "emb": None}
        orig_emb = pipe.get_guidance_scale_embedding
        unet = pipe.unet
        orig_fwd = unet.forward

        def emb(*a, **k):
            e = orig_emb(*a, **k)
            rec["emb"] = e.detach().cpu().numpy().copy()
            return e

        def fwd(sample, timestep, *a, **k):
            rec["unet_batch"].append(int(sample.shape[0]))
            rec["unet_t"].append(float(timestep))
            tc = k.get("timestep_cond")
            if tc is not None:
                rec["timestep_cond"] = np.asarray(tc.detach().cpu().numpy() if hasattr(tc, "detach") else tc).copy()
            return orig_fwd(sample, timestep, *a, **k)

        pipe.get_guidance_scale_embedding = emb
        unet.forward = fwd
        try:
            img, tape = run_pipe(pipe, case, noise, tape_kwargs)
        finally:
            del pipe.get_guidance_scale_embedding
            unet.forward = orig_fwd
        return img, tape, rec

    def run_pipe(pipe, case, noise, tape_kwargs):
        return mf.run_pipe(pipe, case, noise, OUT / "models" / case["model"] / "scheduler" / "scheduler_config.json", tape_kwargs)

    manifest, diffs = [], []
    tc_saved = False
    for idx, case in enumerate(build_cases()):
        model = case["model"]
        noise = np.random.default_rng(3000 + idx).standard_normal((1, 4, 8, 8), dtype=np.float32)
        noise_path = f"fewstep/noise/{case['name']}.npy"
        np.save(FIX / noise_path, noise)
        pipe = pt_pipe(model)
        img, tape, rec = instrumented(pipe, case, noise, {"rng": np.random.default_rng(6000 + idx)})
        sched = pipe.scheduler
        timesteps = [float(t) for t in sched.timesteps]
        assert rec["unet_t"] == timesteps, (rec["unet_t"], timesteps)
        lcm = case["sampler"] == "lcm"
        cfg_on = (not lcm) and case["guidance_scale"] > 1
        assert rec["unet_batch"] == [2 if cfg_on else 1] * len(timesteps), rec["unet_batch"]
        pil = mf.to_pil(img)
        if idx == 0:  # output_type="np" + numpy_to_pil is what output_type="pil" does
            pipe.scheduler = mf.make_scheduler(case["sampler"], OUT / "models" / model / "scheduler" / "scheduler_config.json")
            with mf.NoiseTape(mf.STOCHASTIC["lcm"], replay=tape.drawn), torch.no_grad():
                direct = pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None, width=64, height=64,
                              num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                              latents=torch.from_numpy(noise.copy()), output_type="pil").images[0]
            assert np.array_equal(np.asarray(direct), np.asarray(pil)), "np->pil path differs from output_type=pil"
        img_path = f"fewstep/images/{case['name']}.png"
        pil.save(FIX / img_path, optimize=False)

        notes = []
        step_noise_path = None
        entry_extra = {}
        if lcm:
            k = len(tape.drawn)
            assert k == max(case["steps"] - 1, 0), (k, case["steps"])
            if k:
                step_noise_path = f"fewstep/noise/{case['name']}.steps.npy"
                np.save(FIX / step_noise_path, np.stack(tape.drawn).astype(np.float32))
                notes.append(f"step_noise: the {k} noise tensor(s) LCMScheduler.step drew (randn_tensor), in draw order; none after the last step")
            else:
                notes.append("1-step LCM draws no step noise")
            # the guidance embedding: what the pipeline computed == what the UNet got == numpy formula
            assert rec["emb"] is not None and np.array_equal(rec["emb"], rec["timestep_cond"])
            mine = embedding_np(case["guidance_scale"], TIME_COND_PROJ_DIM)
            emb_diff = float(np.abs(mine - rec["emb"]).max())
            emb_diff64 = float(np.abs(embedding_np64(case["guidance_scale"], TIME_COND_PROJ_DIM) - rec["emb"]).max())
            # sin/cos of arguments up to w*1000 (7500 here): one float32 ulp of exp() moves them by ~5e-4
            assert emb_diff < 2e-3 and emb_diff64 < 2e-3, (emb_diff, emb_diff64)
            notes.append(f"no classifier-free guidance (time_cond_proj_dim set): one UNet call per step, batch 1; "
                         f"timestep_cond = guidance embedding of w = guidance_scale - 1 = {case['guidance_scale'] - 1}")
            notes.append(EMBEDDING_FORMULA)
            if not tc_saved and case["guidance_scale"] != 1.0:
                tc_path = f"fewstep/timestep_cond/{case['name']}.npy"
                np.save(FIX / tc_path, rec["emb"].astype(np.float32))
                entry_extra["timestep_cond"] = dict(guidance_scale=case["guidance_scale"], w=case["guidance_scale"] - 1,
                                                    embedding_dim=TIME_COND_PROJ_DIM, values_npy=tc_path,
                                                    numpy_float32_reimplementation_max_abs_diff=emb_diff,
                                                    numpy_float64_reimplementation_max_abs_diff=emb_diff64)
                tc_saved = True
        else:
            assert rec["timestep_cond"] is None
            s0 = float(sched.sigmas[0])
            notes.append(f"EulerDiscreteScheduler, timestep_spacing trailing: init_noise_sigma = sigma_max = {float(sched.init_noise_sigma):.6f} "
                         f"(not sqrt(sigma_max^2+1): trailing/linspace use sigma_max itself); sigmas {[round(float(x), 6) for x in sched.sigmas]}")
            assert abs(float(sched.init_noise_sigma) - s0) < 1e-6
            notes.append("classifier-free guidance on (guidance_scale > 1), negative prompt used" if cfg_on else
                         f"guidance_scale {case['guidance_scale']} <= 1: no classifier-free guidance, one UNet call per step, batch 1")
        entry = dict(
            name=case["name"],
            model=f"fewstep/models/{model}",
            prompt=case["prompt"],
            negative_prompt=case["negative_prompt"],
            width=case["width"],
            height=case["height"],
            steps=case["steps"],
            guidance_scale=case["guidance_scale"],
            sampler=case["sampler"],
            init_noise=noise_path,
            step_noise=step_noise_path,
            image=img_path,
            timesteps=timesteps,
            **entry_extra,
            notes="; ".join(notes),
        )
        manifest.append(entry)

        line = f"  {case['name']:<20} t={timesteps} std {np.asarray(pil).astype(np.float32).std():5.1f}"
        if not args.skip_ort:
            replay = tape.drawn if tape is not None else None
            opipe = ort_pipe(model)
            oimg, otape, orec = instrumented(opipe, case, noise, {"replay": replay})
            if tape is not None:
                assert len(otape.drawn) == len(tape.drawn)
            assert orec["unet_t"] == timesteps
            if lcm:
                assert np.array_equal(np.asarray(orec["timestep_cond"], dtype=np.float32), rec["emb"])
            opil = np.asarray(mf.to_pil(oimg)).astype(np.float32)
            d8 = np.abs(opil - np.asarray(pil).astype(np.float32))
            df = np.abs(oimg.astype(np.float64) - img.astype(np.float64)) * 255.0
            r = dict(name=case["name"], sampler=case["sampler"], mean_u8=float(d8.mean()), max_u8=float(d8.max()),
                     mean_f=float(df.mean()), max_f=float(df.max()))
            diffs.append(r)
            line += f"  ORT-vs-PT u8 mean {r['mean_u8']:.4f} max {r['max_u8']:.0f}  float*255 mean {r['mean_f']:.5f} max {r['max_f']:.4f}"
        log(line)

    mf.write_json(OUT / "manifest.json", manifest)
    tmp.cleanup()

    log("== lcm-tiny: text encoder/VAE exported byte-identical to sd1-tiny: " + json.dumps(same))
    log(f"== lcm-tiny unet ONNX vs PyTorch max abs {unet_diff:.2e}; timestep_cond changes the output by up to {cond_effect:.3f}")
    if diffs:
        log("== ORT vs PyTorch (markdown)")
        log("| case | sampler | u8 mean | u8 max | float×255 mean | float×255 max |")
        log("|---|---|---|---|---|---|")
        for r in diffs:
            log(f"| {r['name']} | {r['sampler']} | {r['mean_u8']:.4f} | {r['max_u8']:.0f} | {r['mean_f']:.5f} | {r['max_f']:.4f} |")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    known = {mf.sha(p) for p in (FIX / "models").rglob("*") if p.is_file()}
    new = {}
    for p in OUT.rglob("*"):
        if p.is_file() and mf.sha(p) not in known:
            new[mf.sha(p)] = p.stat().st_size
    log(f"== fewstep fixtures: {total/1e6:.3f} MB on disk, {sum(new.values())/1e6:.3f} MB of content not already under models/")


if __name__ == "__main__":
    main()
