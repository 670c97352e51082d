#!/usr/bin/env python3
"""References for easel's guidance cut-off: diffusers' "dynamic classifier-free guidance".

diffusers documents turning guidance off part way through a run with a
`callback_on_step_end` that, at `step_index == int(pipe.num_timesteps * cutoff)`, keeps only the
conditional half of `prompt_embeds` and sets `pipe._guidance_scale = 0`: every later UNet
evaluation runs the conditional batch alone (half the work) and its output is used as is.
easel's `guidance_cutoff` request field is that callback, so these cases are diffusers'
`StableDiffusionPipeline` on sd1-tiny (rebuilt from its seed and checked against the committed
ONNX) with the callback installed.

Run from the repository root:

    .venv-tools/bin/python tools/make_guidance_cutoff_fixtures.py     # ~10 s

Writes tests/fixtures/guidance-cutoff/: manifest.json (the references/ manifest's fields plus
`guidance_cutoff`, `guided_evaluations` and the UNet batch per evaluation that diffusers ran),
noise/*.npy and images/*.png.
"""

from __future__ import annotations

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, NEGATIVE, STOCHASTIC, finish, fixture_args, fresh_dir, log, rebuild_and_verify, reference_entry,
    run_pipe, save_png, scratch_dir, to_pil, torch_setup,
)

OUT = FIX / "guidance-cutoff"
PROMPT = "a red circle on a blue background"

# (sampler, steps, cutoff): first-order and multistep samplers, PNDM's extra evaluation, Heun's
# 2N-1 evaluations, an ancestral sampler (its noise replayed), the extreme 0 (only the first
# evaluation guided) and products that are exact (0.3 · 10) or not (0.7 · 10 = 7.000000000000001
# in Python, which an f32 cut-off would truncate to 6). Early cut-offs, so that each changes the
# picture by more than the parity tolerance (see the notes).
CASES = [
    ("euler", 10, 0.3),
    ("ddim", 10, 0.0),
    ("pndm", 10, 0.2),
    ("dpmpp_2m", 8, 0.25),
    ("heun", 5, 0.2),
    ("euler_a", 10, 0.7),
]


class DynamicCfg:
    """diffusers' dynamic-CFG callback, recording the UNet batch of every evaluation."""

    def __init__(self, pipe, cutoff: float):
        self.pipe, self.cutoff, self.batches = pipe, cutoff, []
        unet = pipe.unet
        self.original_forward = unet.forward

        def forward(sample, *a, **kw):
            self.batches.append(int(sample.shape[0]))
            return self.original_forward(sample, *a, **kw)

        unet.forward = forward

    def __call__(self, pipe, step_index, timestep, kwargs):
        if step_index == int(pipe.num_timesteps * self.cutoff):
            kwargs["prompt_embeds"] = kwargs["prompt_embeds"].chunk(2)[-1]
            pipe._guidance_scale = 0.0
        return kwargs

    def restore(self):
        self.pipe.unet.forward = self.original_forward


class WithCallback:
    """A pipeline proxy that adds the callback to each call, so common.run_pipe runs unchanged."""

    def __init__(self, pipe, callback):
        self.__dict__["_pipe"] = pipe
        self.__dict__["_callback"] = callback

    def __getattr__(self, k):
        return getattr(self._pipe, k)

    def __setattr__(self, k, v):
        setattr(self._pipe, k, v)

    def __call__(self, **kw):
        kw["callback_on_step_end"] = self._callback
        kw["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
        return self._pipe(**kw)


def main():
    fixture_args(__doc__).parse_args()
    torch_setup()
    fresh_dir(OUT, ("noise", "images"))
    work = scratch_dir("easel-guidance-cutoff-")
    pipe, ddir, _ = rebuild_and_verify("sd1-tiny", work)
    sched_file = ddir / "scheduler" / "scheduler_config.json"

    manifest = []
    for idx, (sampler, steps, cutoff) in enumerate(CASES):
        name = f"gc-{sampler}-{steps}-{cutoff}"
        case = dict(name=name, prompt=PROMPT, negative_prompt=NEGATIVE, width=64, height=64, steps=steps,
                    guidance_scale=7.5, sampler=sampler)
        noise = np.random.default_rng(7000 + idx).standard_normal((1, 4, 8, 8), dtype=np.float32)
        noise_path = f"guidance-cutoff/noise/{name}.npy"
        np.save(FIX / noise_path, noise)

        callback = DynamicCfg(pipe, cutoff)
        tape_kwargs = {"rng": np.random.default_rng(8000 + idx)}
        img, tape = run_pipe(WithCallback(pipe, callback), case, noise, sched_file, tape_kwargs)
        callback.restore()
        evaluations = pipe.num_timesteps
        guided = int(evaluations * cutoff) + 1
        assert callback.batches == [2] * guided + [1] * (evaluations - guided), (callback.batches, guided)

        # The same case without the cut-off (the same noise replayed), to say what it changes.
        replay = {"replay": tape.drawn} if tape is not None else {}
        full, _ = run_pipe(pipe, case, noise, sched_file, replay)
        pipe._guidance_scale = case["guidance_scale"]
        pil = to_pil(img)
        changed = np.abs(np.asarray(pil).astype(np.float32) - np.asarray(to_pil(full)).astype(np.float32))

        img_path = f"guidance-cutoff/images/{name}.png"
        save_png(FIX / img_path, pil)
        step_noise_path = None
        if sampler in STOCHASTIC:
            step_noise_path = f"guidance-cutoff/noise/{name}.steps.npy"
            np.save(FIX / step_noise_path, np.stack(tape.drawn).astype(np.float32))
        notes = (f"{guided} of {evaluations} UNet evaluations guided (batch 2), the rest conditional only; "
                 f"against the same case without the cut-off: mean {changed.mean():.2f}, max {changed.max():.0f} on 0-255")
        log(f"  {name}: {notes}")
        manifest.append(reference_entry(
            case, "models/sd1-tiny", noise_path, step_noise_path, img_path, notes,
            after_model={"guidance_cutoff": cutoff},
            before_notes={"guided_evaluations": guided, "unet_batches": callback.batches},
        ))
    finish(OUT, manifest)


if __name__ == "__main__":
    main()
