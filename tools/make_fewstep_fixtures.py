#!/usr/bin/env python3
"""Few-step (LCM-distilled / SD-Turbo-shaped) fixtures under tests/fixtures/fewstep/.

Run from the repository root (needs tests/fixtures/ from make_fixtures.py):

    .venv-tools/bin/python tools/make_fewstep_fixtures.py            # everything
    .venv-tools/bin/python tools/make_fewstep_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

It rebuilds sd1-tiny's PyTorch modules with common.py's builder (the one make_fixtures.py
uses) and checks them against the committed ONNX files, then writes:

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

import json
import shutil
from pathlib import Path

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, MAX_LEN, MODEL_SPECS, NEGATIVE, STOCHASTIC, NoiseTape, assemble_pipeline, cached_pipelines,
    describe_signature, finish, fixture_args, fresh_dir, log, make_scheduler, onnx_signature, optimum_export,
    ort_session, ort_vs_pt, rebuild_and_verify, reference_entry, run_pipe, save_diffusers, save_png,
    scheduler_from_config, scratch_dir, set_name_or_path, tiny_unet, to_pil, torch_setup, write_json,
)

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
    """sd1-tiny's UNet architecture with a guidance-embedding input (timestep_cond)."""
    import torch

    spec = MODEL_SPECS["sd1-tiny"]
    torch.manual_seed(LCM_UNET_SEED)
    return tiny_unet(spec["unet_sample"], spec["use_linear_projection"], time_cond_proj_dim=TIME_COND_PROJ_DIM)


def make_lcm_model(sd1_pipe, work: Path):
    """Save + export the LCM pipeline; assemble models/lcm-tiny from sd1-tiny's files plus the
    exported unet/, model_index.json and the original scheduler file."""
    import torch

    pipe = assemble_pipeline(sd1_pipe.vae, sd1_pipe.text_encoder, sd1_pipe.tokenizer, build_lcm_unet(), scheduler_from_config(LCM_SCHEDULER))
    ddir = work / "diffusers" / "lcm-tiny"
    save_diffusers(pipe, ddir, LCM_SCHEDULER)
    exp = work / "onnx" / "lcm-tiny"
    optimum_export(ddir, exp, "lcm-tiny")
    exported_sched = json.loads((exp / "scheduler" / "scheduler_config.json").read_text())
    set_name_or_path(exp, "easel-fixtures/lcm-tiny")
    same = {}
    for part in ("text_encoder", "vae_decoder", "vae_encoder"):
        same[part] = (exp / part / "model.onnx").read_bytes() == (SD1 / part / "model.onnx").read_bytes()
    log(f"  exported text encoder / VAE ONNX byte-identical to sd1-tiny's: {same}")

    out = OUT / "models" / "lcm-tiny"
    shutil.copytree(SD1, out)
    shutil.rmtree(out / "unet")
    shutil.copytree(exp / "unet", out / "unet")
    shutil.copy2(exp / "model_index.json", out / "model_index.json")
    write_json(out / "scheduler" / "scheduler_config.json", LCM_SCHEDULER)

    # ONNX UNet vs PyTorch UNet, with timestep_cond
    s = ort_session(out / "unet" / "model.onnx")
    rng = np.random.default_rng(4242)
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    ehs = rng.standard_normal((2, MAX_LEN, 32), dtype=np.float32)
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
    write_json(out / "model_index.json", mi)
    write_json(out / "scheduler" / "scheduler_config.json", TURBO_SCHEDULER)


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
    add("turbo-2step-cfg1.5", "turbo-tiny", "euler", 2, 1.5, "a red cube on a table", negative=NEGATIVE)
    return cases


def main():
    args = fixture_args(__doc__, skip_ort=True).parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    torch_setup()
    fresh_dir(OUT, ("models", "noise", "images", "timestep_cond"))

    work = scratch_dir("easel-fewstep-")

    # 1. sd1-tiny rebuilt from make_fixtures' seed, checked against the committed ONNX
    sd1, sd1_dir, _ = rebuild_and_verify("sd1-tiny", work)

    # 2. models
    log("== model lcm-tiny")
    lcm_dir, exported_sched, unet_diff, cond_effect, same = make_lcm_model(sd1, work)
    sig = onnx_signature(OUT / "models" / "lcm-tiny" / "unet" / "model.onnx")
    tc_in = [i for i in sig["inputs"] if i["name"] == "timestep_cond"]
    assert tc_in and tc_in[0]["dtype"] == "float" and tc_in[0]["shape"][1:] == [TIME_COND_PROJ_DIM], sig
    log("  unet: " + describe_signature(sig))
    log("  optimum re-saved scheduler (overwritten): " + json.dumps(exported_sched, sort_keys=True))
    log("== model turbo-tiny")
    make_turbo_model()

    # 3. references
    pt_dirs = {"lcm-tiny": lcm_dir, "turbo-tiny": sd1_dir}
    pt_pipe, ort_pipe = cached_pipelines(StableDiffusionPipeline, pt_dirs.get, "ORTStableDiffusionPipeline", lambda model: OUT / "models" / model)

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
            img, tape = run_fewstep(pipe, case, noise, tape_kwargs)
        finally:
            del pipe.get_guidance_scale_embedding
            unet.forward = orig_fwd
        return img, tape, rec

    def run_fewstep(pipe, case, noise, tape_kwargs):
        return run_pipe(pipe, case, noise, OUT / "models" / case["model"] / "scheduler" / "scheduler_config.json", tape_kwargs)

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
        pil = to_pil(img)
        if idx == 0:  # output_type="np" + numpy_to_pil is what output_type="pil" does
            pipe.scheduler = make_scheduler(case["sampler"], OUT / "models" / model / "scheduler" / "scheduler_config.json")
            with NoiseTape({"step": STOCHASTIC["lcm"]}, replay=tape.drawn), torch.no_grad():
                direct = pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None, width=64, height=64,
                              num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                              latents=torch.from_numpy(noise.copy()), output_type="pil").images[0]
            assert np.array_equal(np.asarray(direct), np.asarray(pil)), "np->pil path differs from output_type=pil"
        img_path = f"fewstep/images/{case['name']}.png"
        save_png(FIX / img_path, pil)

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
        entry = reference_entry(case, f"fewstep/models/{model}", noise_path, step_noise_path, img_path, "; ".join(notes),
                                before_notes=dict(timesteps=timesteps, **entry_extra))
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
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)


    log("== lcm-tiny: text encoder/VAE exported byte-identical to sd1-tiny: " + json.dumps(same))
    log(f"== lcm-tiny unet ONNX vs PyTorch max abs {unet_diff:.2e}; timestep_cond changes the output by up to {cond_effect:.3f}")
    finish(OUT, manifest, diffs)


if __name__ == "__main__":
    main()
