#!/usr/bin/env python3
"""Reference trajectories for easel's samplers, recorded with diffusers.

Writes daemon/src/generation/sampler/testdata/references.json, which the Rust unit tests in
daemon/src/generation/sampler/ replay.  Run with the tools venv:

    .venv-tools/bin/python tools/sampler_references.py

Every scheduler is built the way a pipeline loads it from a model folder: the config is
written to a JSON file, read back as a plain dict and passed to `Class.from_config`, so an
absent key takes the class default (a scheduler object built in code would carry
`_use_default_values`, which changes what `from_config` does).

The "model" is synthetic and elementwise so that Rust can compute it bit-for-bit:
    model_output = f32(0.3 * scaled_input + 0.05 * sin(t / 100 + arange(n) * 0.1))
(evaluated in float64, rounded to float32).  Ancestral and LCM noise comes from a recorded
pool: common.NoiseTape replaces `randn_tensor` to hand out consecutive slices of it.
"""

import json
import os
import sys
import tempfile

import numpy as np
import torch

# common first: it sets the offline environment that huggingface_hub reads on import
from common import ROOT, SD15_SCHEDULER, STOCHASTIC, NoiseTape

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

assert diffusers.__version__ == "0.35.2", diffusers.__version__

OUT = ROOT / "daemon" / "src" / "generation" / "sampler" / "testdata" / "references.json"

SHAPE = (1, 4, 4, 3)
N = int(np.prod(SHAPE))
STEPS = [1, 4, 20]
ADD_NOISE_STEPS = 4
ADD_NOISE_INDEX = 2

# Scheduler configs as they sit on disk in model folders.
CONFIGS = {
    # runwayml/stable-diffusion-v1-5: tools/configs/sd15-scheduler.json, also sd1-tiny's file
    "sd15": SD15_SCHEDULER,
    # stabilityai/stable-diffusion-2 (768, v-prediction)
    "sd2_euler_v": {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.10.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    # A minimal DDIM v-prediction config: no timestep_spacing, clip_sample or
    # set_alpha_to_one, so every class default is exercised (DDIM: clip_sample=True).
    "sd2_ddim_minimal": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "steps_offset": 1,
    },
    # "Common diffusion noise schedules are flawed" recipe: trailing spacing, zero terminal SNR.
    "trailing_zsnr_v": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "trailing",
    },
    # Plain DDPM linear betas, epsilon, Karras sigmas asked for by the file (Euler/Heun honour it).
    "linear_karras": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "num_train_timesteps": 1000,
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "use_karras_sigmas": True,
    },
    # Cosine schedule; DPM-Solver++ with karras must not round timesteps here.
    "cosine_trailing": {
        "_class_name": "DPMSolverMultistepScheduler",
        "solver_type": "heun",
        "beta_schedule": "squaredcos_cap_v2",
        "num_train_timesteps": 1000,
        "timestep_spacing": "trailing",
        "prediction_type": "epsilon",
    },
    # Less common keys, each read by some classes: LCM's boundary condition at a small
    # timestep_scaling, clip_sample_range (DDIM/LCM/Heun), final_sigmas_type (Euler/DPM),
    # DPM-Solver without lower_order_final (second order on the last step). (Adding
    # solver_type "heun" here makes diffusers' Karras variant return NaN: its last step has
    # h = 0 and the heun coefficient is 0/0.)
    "mixed_options": {
        "_class_name": "LCMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "original_inference_steps": 100,
        "timestep_scaling": 0.05,
        "clip_sample": True,
        "clip_sample_range": 1.5,
        "set_alpha_to_one": False,
        "final_sigmas_type": "sigma_min",
        "lower_order_final": False,
        "timestep_spacing": "trailing",
    },
}

# easel sampler name -> (class, from_config overrides, step kwargs)
SAMPLERS = {
    "euler": (EulerDiscreteScheduler, {}, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, {}),
    "ddim": (DDIMScheduler, {}, {"eta": 0.0}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, {}),
    # easel's dpmpp_2m is A1111's "DPM++ 2M": never Karras, even when the file asks for it.
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
        {},
    ),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        {},
    ),
    "lcm": (LCMScheduler, {}, {}),
    "heun": (HeunDiscreteScheduler, {}, {}),
}

rng = np.random.default_rng(20251126)
INIT_NOISE = rng.standard_normal(N).astype(np.float32)
CLEAN = (0.5 * rng.standard_normal(N)).astype(np.float32)
ADD_NOISE = rng.standard_normal(N).astype(np.float32)
POOL_STEPS = max(STEPS)
NOISE_POOL = rng.standard_normal(POOL_STEPS * N).astype(np.float32)
# every draw is one step's noise of SHAPE: the pool, cut into consecutive slices, in draw order
POOL_DRAWS = list(NOISE_POOL.reshape((POOL_STEPS,) + SHAPE))


def model(scaled: torch.Tensor, t) -> torch.Tensor:
    t = float(t)
    x = scaled.double().numpy().reshape(-1)
    out = 0.3 * x + 0.05 * np.sin(t / 100.0 + np.arange(N, dtype=np.float64) * 0.1)
    return torch.from_numpy(out.astype(np.float32)).reshape(SHAPE)


def load(cls, path, overrides):
    with open(path) as f:
        return cls.from_config(json.load(f), **overrides)


def f32list(a):
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in a]


def tlist(ts):
    out = []
    for v in np.asarray(ts.numpy() if hasattr(ts, "numpy") else ts, dtype=np.float64).reshape(-1):
        out.append(int(v) if float(v).is_integer() else float(np.float32(v)))
    return out


def run_case(cls, path, overrides, step_kwargs, steps, name):
    s = load(cls, path, overrides)
    s.set_timesteps(steps)
    timesteps = s.timesteps
    sigma0 = float(s.init_noise_sigma)
    latents = torch.from_numpy(INIT_NOISE.copy()).reshape(SHAPE) * s.init_noise_sigma
    # Walk the schedule by position, as easel does.  Without this, diffusers looks the first
    # timestep up by value and starts at entry 1 when the first value repeats (DPM-Solver++
    # Karras on a cosine schedule truncates 999.x and 999.y both to 999, then runs off the end).
    if hasattr(s, "set_begin_index"):
        s.set_begin_index(0)
    pred = None
    # the stochastic samplers' modules draw from the pool, from its start for every case
    with NoiseTape(STOCHASTIC, replay=POOL_DRAWS) as tape:
        for t in timesteps:
            inp = s.scale_model_input(latents, t)
            out = s.step(model(inp, t), t, latents, **step_kwargs)
            latents = out.prev_sample
            if name == "lcm":
                pred = out.denoised
            elif name.startswith("dpmpp"):
                pred = s.model_outputs[-1]
            else:
                pred = getattr(out, "pred_original_sample", None)
    case = {
        "timesteps": tlist(timesteps),
        "init_noise_sigma": sigma0,
        "final": f32list(latents),
        "noise_used": sum(a.size for a in tape.drawn),  # floats taken from the pool
    }
    if pred is not None:
        case["pred_original"] = f32list(pred)
    if steps == ADD_NOISE_STEPS:
        s = load(cls, path, overrides)
        s.set_timesteps(steps)
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(ADD_NOISE_INDEX)
        t = s.timesteps[ADD_NOISE_INDEX : ADD_NOISE_INDEX + 1]
        noisy = s.add_noise(
            torch.from_numpy(CLEAN.copy()).reshape(SHAPE), torch.from_numpy(ADD_NOISE.copy()).reshape(SHAPE), t
        )
        case["add_noise_index"] = ADD_NOISE_INDEX
        case["add_noise"] = f32list(noisy)
    return case


def main():
    cases = []
    skipped = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg_name, cfg in CONFIGS.items():
            path = os.path.join(tmp, f"{cfg_name}.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            for name, (cls, overrides, step_kwargs) in SAMPLERS.items():
                for steps in STEPS:
                    try:
                        case = run_case(cls, path, overrides, step_kwargs, steps, name)
                    except Exception as e:  # diffusers refuses the combination
                        skipped.append(f"{cfg_name}/{name}/{steps}: {type(e).__name__}: {e}")
                        continue
                    case.update({"config": cfg_name, "sampler": name, "steps": steps})
                    cases.append(case)
    doc = {
        "diffusers": diffusers.__version__,
        "shape": list(SHAPE),
        "configs": CONFIGS,
        "init_noise": f32list(INIT_NOISE),
        "clean": f32list(CLEAN),
        "add_noise_noise": f32list(ADD_NOISE),
        "noise_pool": f32list(NOISE_POOL),
        "skipped": skipped,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases, {len(skipped)} skipped, {OUT.stat().st_size} bytes -> {OUT}")
    for s in skipped:
        print("  skipped", s, file=sys.stderr)


if __name__ == "__main__":
    main()
