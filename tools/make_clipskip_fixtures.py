#!/usr/bin/env python3
"""Clip-skip fixtures under tests/fixtures/clipskip/: sd1-tiny with a text encoder that also
outputs its hidden states, and diffusers references made with `clip_skip`.

Run from the repository root (needs tests/fixtures/ from make_fixtures.py):

    .venv-tools/bin/python tools/make_clipskip_fixtures.py      # ~15 s on 2 CPUs

What it does:

  1. rebuilds sd1-tiny's diffusers pipeline with common.py's builder (the one make_fixtures.py
     uses; seed 1) and checks it against the committed tests/fixtures/models/sd1-tiny ONNX;
  2. saves it with `"output_hidden_states": true` in text_encoder/config.json (what optimum
     sets on SDXL/SD3 text encoders before exporting them) and exports it with
     `python -m optimum.exporters.onnx --task text-to-image`: the text encoder then also has the
     outputs hidden_states.0 ... hidden_states.L. The UNet/VAE exports are byte-identical to
     sd1-tiny's (checked); models/sd1-tiny-hidden/ is sd1-tiny's folder with text_encoder/
     replaced (and model_index.json's _name_or_path);
  3. checks every text-encoder output against PyTorch, asserts last_hidden_state ==
     final_layer_norm(hidden_states.L), and that final_layer_norm's scale and bias come back by
     per-channel least squares from (normalized hidden_states.L, last_hidden_state) over the
     77 positions of one prompt (also on a copy whose final LayerNorm has random scale/bias:
     sd1-tiny's is the untrained 1 / 0);
  4. writes diffusers' encode_prompt embeddings and StableDiffusionPipeline images with
     clip_skip=1 (A1111 "Clip skip 2"), and replays each case through easel's path (ORT
     hidden states + a numpy LayerNorm with the recovered scale/bias + optimum's ORT pipeline).

See the README text in tools/README.md ("make_clipskip_fixtures.py").
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, MAX_LEN, NEGATIVE, describe_signature, finish, fixture_args, fresh_dir, load_ort_pipeline,
    load_pipeline, log, onnx_signature, optimum_export, ort_session, rebuild_and_verify, reference_entry,
    run_pipe, save_png, scratch_dir, to_pil, torch_setup, write_json,
)

OUT = FIX / "clipskip"
SD1 = FIX / "models" / "sd1-tiny"
NAME = "sd1-tiny-hidden"
CLIP_SKIP_DIFFUSERS = 1  # = A1111 "Clip skip 2" (penultimate layer)

ENCODE_PROMPT_SEMANTICS = (
    "diffusers 0.35.2 StableDiffusionPipeline.encode_prompt (pipeline_stable_diffusion.py lines 332-512): "
    "the prompt is tokenized with padding='max_length' (77), truncation=True; clip_skip None -> "
    "text_encoder(ids)[0] = last_hidden_state; clip_skip k -> text_encoder(ids, output_hidden_states=True) "
    "and prompt_embeds = text_model.final_layer_norm(hidden_states[-(k + 1)]) (lines 422-437), where "
    "hidden_states has num_hidden_layers + 1 entries (0 = token + position embeddings, i = after encoder "
    "layer i, the last one BEFORE final_layer_norm). The negative prompt (or '' when None) is encoded "
    "with text_encoder(ids)[0] = last_hidden_state, WITHOUT clip skip (lines 492-496), only under "
    "classifier-free guidance. AUTOMATIC1111 applies 'Clip skip N' to the negative prompt too."
)


class WithArgs:
    """A pipeline proxy that adds keyword arguments to each call, so common.run_pipe
    (which builds the usual call) can run clip_skip / prompt_embeds cases unchanged."""

    def __init__(self, pipe, **extra):
        self.__dict__["_pipe"] = pipe
        self.__dict__["_extra"] = extra

    def __getattr__(self, k):
        return getattr(self._pipe, k)

    def __setattr__(self, k, v):
        setattr(self._pipe, k, v)

    def __call__(self, **kw):
        kw.update(self._extra)
        if "prompt_embeds" in self._extra:
            kw["prompt"] = None
            kw["negative_prompt"] = None
        return self._pipe(**kw)


def layer_norm(x, gamma, beta, eps):
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def recover_ln(x, y, eps):
    """Per-channel least squares: y[t, c] = gamma[c] * xhat[t, c] + beta[c] over the positions
    t, xhat = (x - mean) / sqrt(var + eps) over the channels. x, y: [T, C]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xhat = layer_norm(x, 1.0, 0.0, eps)
    gamma = np.empty(x.shape[1])
    beta = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        a = np.stack([xhat[:, c], np.ones(x.shape[0])], axis=1)
        (gamma[c], beta[c]), *_ = np.linalg.lstsq(a, y[:, c], rcond=None)
    return gamma, beta


def export_hidden(ddir: Path, work: Path):
    hdir = work / "diffusers" / NAME
    shutil.copytree(ddir, hdir)
    cfg_path = hdir / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["output_hidden_states"] = True
    write_json(cfg_path, cfg)
    exp = work / "onnx" / NAME
    optimum_export(hdir, exp, NAME)
    same = {p: (exp / p / "model.onnx").read_bytes() == (SD1 / p / "model.onnx").read_bytes() for p in ("unet", "vae_decoder", "vae_encoder")}
    assert all(same.values()), f"UNet/VAE export differs from sd1-tiny's: {same}"
    out = OUT / "models" / NAME
    shutil.copytree(SD1, out)
    shutil.rmtree(out / "text_encoder")
    shutil.copytree(exp / "text_encoder", out / "text_encoder")
    te_cfg = json.loads((out / "text_encoder" / "config.json").read_text())
    assert "_name_or_path" not in te_cfg and te_cfg["output_hidden_states"] is True, te_cfg
    mi = json.loads((out / "model_index.json").read_text())
    mi["_name_or_path"] = f"easel-fixtures/{NAME}"
    write_json(out / "model_index.json", mi)
    return out, same


def main():
    fixture_args(__doc__).parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    torch_setup()
    fresh_dir(OUT, ("models", "noise", "images", "embeddings"))
    work = scratch_dir("easel-clipskip-")

    # 1. sd1-tiny rebuilt from make_fixtures' seed, checked against the committed ONNX
    sd1, ddir, _ = rebuild_and_verify("sd1-tiny", work)

    # 2. export with hidden states
    log(f"== model {NAME}")
    mdir, same = export_hidden(ddir, work)
    log(f"  UNet / VAE ONNX byte-identical to sd1-tiny's: {same}")
    te_cfg = json.loads((mdir / "text_encoder" / "config.json").read_text())
    n_layers, eps = te_cfg["num_hidden_layers"], float(te_cfg["layer_norm_eps"])
    sig = onnx_signature(mdir / "text_encoder" / "model.onnx")
    out_names = [o["name"] for o in sig["outputs"]]
    expect = ["last_hidden_state", "pooler_output"] + [f"hidden_states.{i}" for i in range(n_layers + 1)]
    assert out_names == expect, out_names
    log("  text_encoder: " + describe_signature(sig))
    log(f"  num_hidden_layers {n_layers}, layer_norm_eps {eps}")

    # 3. ONNX vs PyTorch, and the LayerNorm facts
    te = sd1.text_encoder
    tok = sd1.tokenizer
    sess = ort_session(mdir / "text_encoder" / "model.onnx")

    def ids_of(text):
        return tok(text, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="np").input_ids.astype(np.int64)

    def ort_encode(text):
        return dict(zip(out_names, sess.run(None, {"input_ids": ids_of(text)})))

    rng = np.random.default_rng(1234)
    rand_ids = rng.integers(0, te.config.vocab_size, size=(2, MAX_LEN)).astype(np.int64)
    rand_ids[:, -1] = te.config.vocab_size - 1
    with torch.no_grad():
        ref = te(torch.from_numpy(rand_ids), output_hidden_states=True)
    o = dict(zip(out_names, sess.run(None, {"input_ids": rand_ids})))
    assert len(ref.hidden_states) == n_layers + 1
    onnx_vs_pt = {"last_hidden_state": float(np.abs(o["last_hidden_state"] - ref.last_hidden_state.numpy()).max()),
                  "pooler_output": float(np.abs(o["pooler_output"] - ref.pooler_output.numpy()).max())}
    for i in range(n_layers + 1):
        onnx_vs_pt[f"hidden_states.{i}"] = float(np.abs(o[f"hidden_states.{i}"] - ref.hidden_states[i].numpy()).max())
    log("  ONNX vs PyTorch max abs: " + ", ".join(f"{k} {v_:.1e}" for k, v_ in onnx_vs_pt.items()))
    assert max(onnx_vs_pt.values()) < 1e-4, onnx_vs_pt
    last = f"hidden_states.{n_layers}"
    penult = f"hidden_states.{n_layers - CLIP_SKIP_DIFFUSERS}"

    fln = te.text_model.final_layer_norm
    g_true = fln.weight.detach().numpy().astype(np.float64)
    b_true = fln.bias.detach().numpy().astype(np.float64)
    assert fln.eps == eps
    ln_prompt = "a photograph of an astronaut riding a horse"
    enc = ort_encode(ln_prompt)
    ln_identity = float(np.abs(layer_norm(enc[last][0], g_true, b_true, eps) - enc["last_hidden_state"][0]).max())
    g_rec, b_rec = recover_ln(enc[last][0], enc["last_hidden_state"][0], eps)
    rec_err = (float(np.abs(g_rec - g_true).max()), float(np.abs(b_rec - b_true).max()))
    log(f"  last_hidden_state vs final_layer_norm(numpy, eps {eps})({last}): max abs {ln_identity:.2e}")
    log(f"  final_layer_norm: gamma in [{g_true.min()}, {g_true.max()}], beta in [{b_true.min()}, {b_true.max()}] (untrained init)")
    log(f"  least squares over 77 positions of {ln_prompt!r}: gamma max err {rec_err[0]:.2e}, beta max err {rec_err[1]:.2e}")
    assert ln_identity < 1e-5 and max(rec_err) < 1e-5, (ln_identity, rec_err)
    # the same recovery on a copy with a non-trivial final LayerNorm (PyTorch, not exported)
    te_r = copy.deepcopy(te)
    gen = np.random.default_rng(4321)
    with torch.no_grad():
        te_r.text_model.final_layer_norm.weight.copy_(torch.from_numpy(gen.uniform(0.5, 1.5, 32).astype(np.float32)))
        te_r.text_model.final_layer_norm.bias.copy_(torch.from_numpy(gen.normal(0, 0.5, 32).astype(np.float32)))
        r_out = te_r(torch.from_numpy(ids_of(ln_prompt)), output_hidden_states=True)
    g_r, b_r = recover_ln(r_out.hidden_states[-1][0].numpy(), r_out.last_hidden_state[0].numpy(), eps)
    rec_err_r = (float(np.abs(g_r - te_r.text_model.final_layer_norm.weight.detach().numpy()).max()),
                 float(np.abs(b_r - te_r.text_model.final_layer_norm.bias.detach().numpy()).max()))
    log(f"  same on a copy with random final LayerNorm (gamma U(0.5,1.5), beta N(0,0.5)): gamma max err {rec_err_r[0]:.2e}, beta max err {rec_err_r[1]:.2e}")
    assert max(rec_err_r) < 1e-5, rec_err_r

    # 4. references
    log("== references")
    sched_file = SD1 / "scheduler" / "scheduler_config.json"
    pt = load_pipeline(StableDiffusionPipeline, ddir)
    ortp = load_ort_pipeline("ORTStableDiffusionPipeline", mdir)
    try:
        ortp.encode_prompt("a", "cpu", 1, False, clip_skip=CLIP_SKIP_DIFFUSERS)
        ort_clip_skip = "works"
    except Exception as e:  # optimum's ORTTextEncoder has no text_model.final_layer_norm
        ort_clip_skip = f"{type(e).__name__}: {e}"
    log(f"  optimum ORTStableDiffusionPipeline with clip_skip: {ort_clip_skip}")

    astro, neg, short = "a photograph of an astronaut riding a horse", NEGATIVE, "a red cube on a table"
    cases = [
        dict(name="cs-euler-cfg", prompt=astro, negative_prompt=neg, steps=10, guidance_scale=7.5, sampler="euler", uncond_skip=False),
        dict(name="cs-dpmpp_2m-cfg", prompt=short, negative_prompt="", steps=10, guidance_scale=7.5, sampler="dpmpp_2m", uncond_skip=False),
        dict(name="cs-ddim-nocfg", prompt=short, negative_prompt="", steps=10, guidance_scale=1.0, sampler="ddim", uncond_skip=False),
        dict(name="cs-euler-cfg-a1111", prompt=astro, negative_prompt=neg, steps=10, guidance_scale=7.5, sampler="euler", uncond_skip=True),
    ]
    emb_files = {}  # (kind, text, skip) -> path

    def save_emb(case_name, kind, arr, key):
        if key not in emb_files:
            path = f"clipskip/embeddings/{case_name}.{kind}.npy"
            np.save(FIX / path, arr.astype(np.float32))
            emb_files[key] = path
        return emb_files[key]

    manifest, checks, pngs = [], [], {}
    for idx, case in enumerate(cases):
        case.update(width=64, height=64)
        cfg_on = case["guidance_scale"] > 1
        noise = np.random.default_rng(8000 + idx).standard_normal((1, 4, 8, 8), dtype=np.float32)
        noise_path = f"clipskip/noise/{case['name']}.npy"
        np.save(FIX / noise_path, noise)
        with torch.no_grad():
            cond, uncond = pt.encode_prompt(case["prompt"], "cpu", 1, True, case["negative_prompt"] or None, clip_skip=CLIP_SKIP_DIFFUSERS)
            cond0, uncond0 = pt.encode_prompt(case["prompt"], "cpu", 1, True, case["negative_prompt"] or None)
            uncond_s = pt.encode_prompt(case["negative_prompt"] or "", "cpu", 1, False, clip_skip=CLIP_SKIP_DIFFUSERS)[0]
        cond, uncond, cond0, uncond0, uncond_s = (t.numpy() for t in (cond, uncond, cond0, uncond0, uncond_s))
        assert np.array_equal(uncond, uncond0), "diffusers applied clip_skip to the negative prompt"
        skip_effect = float(np.abs(cond - cond0).max())
        assert skip_effect > 0.1, skip_effect

        if case["uncond_skip"]:  # A1111: negative prompt with clip skip too
            runner = WithArgs(pt, prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond_s))
            uncond_used = uncond_s
        else:
            runner = WithArgs(pt, clip_skip=CLIP_SKIP_DIFFUSERS)
            uncond_used = uncond
        img, _ = run_pipe(runner, case, noise, sched_file, {})
        pil = to_pil(img)
        img_path = f"clipskip/images/{case['name']}.png"
        save_png(FIX / img_path, pil)
        png = np.asarray(pil).astype(np.float32)
        # the saved embeddings are what the pipeline used: feeding them gives the same image
        feed = dict(prompt_embeds=torch.from_numpy(cond))
        if cfg_on:
            feed["negative_prompt_embeds"] = torch.from_numpy(uncond_used)
        img_e, _ = run_pipe(WithArgs(pt, **feed), case, noise, sched_file, {})
        assert np.array_equal(img_e, img), case["name"]
        img0, _ = run_pipe(pt, case, noise, sched_file, {})
        noskip_u8 = int(np.abs(np.asarray(to_pil(img0)).astype(np.float32) - png).max())

        # easel's path: ORT hidden states -> numpy final LayerNorm with the recovered gamma/beta
        e_c = ort_encode(case["prompt"])
        cond_ort = layer_norm(e_c[penult], g_rec, b_rec, eps).astype(np.float32)
        e_u = ort_encode(case["negative_prompt"] or "")
        uncond_ort = layer_norm(e_u[penult], g_rec, b_rec, eps).astype(np.float32) if case["uncond_skip"] else e_u["last_hidden_state"]
        emb_err = max(float(np.abs(cond_ort - cond).max()), float(np.abs(uncond_ort - uncond_used).max()) if cfg_on else 0.0)
        feed = dict(prompt_embeds=torch.from_numpy(cond_ort))
        if cfg_on:
            feed["negative_prompt_embeds"] = torch.from_numpy(uncond_ort)
        oimg, _ = run_pipe(WithArgs(ortp, **feed), case, noise, sched_file, {})
        d8 = np.abs(np.asarray(to_pil(oimg)).astype(np.float32) - png)
        df = np.abs(oimg.astype(np.float64) - img.astype(np.float64)) * 255
        chk = dict(name=case["name"], emb_err=emb_err, mean_u8=float(d8.mean()), max_u8=float(d8.max()), max_f=float(df.max()),
                   noskip_u8=noskip_u8, skip_effect=skip_effect)
        checks.append(chk)
        assert emb_err < 1e-5 and chk["max_u8"] <= 1, chk

        # files are shared between cases with the same prompt / negative (named after the first)
        embeddings = {
            "cond": save_emb(case["name"], "cond", cond, ("cond", case["prompt"])),
            "uncond": save_emb(case["name"], "uncond", uncond_used, ("uncond_skip" if case["uncond_skip"] else "uncond", case["negative_prompt"]))
            if cfg_on else None,
        }
        notes = [
            f"diffusers clip_skip={CLIP_SKIP_DIFFUSERS} = A1111 'Clip skip {CLIP_SKIP_DIFFUSERS + 1}': prompt_embeds = "
            f"text_model.final_layer_norm({penult}) ({penult} = hidden_states[-{CLIP_SKIP_DIFFUSERS + 1}])",
        ]
        if not cfg_on:
            notes.append("guidance_scale 1: no classifier-free guidance, the negative prompt is not encoded")
        elif case["uncond_skip"]:
            notes.append("A1111 semantics: the negative prompt also gets clip skip (uncond = final_layer_norm("
                         f"{penult}) of the negative); made by passing prompt_embeds/negative_prompt_embeds to the pipeline")
        else:
            notes.append("diffusers semantics: the negative prompt (or '') is encoded WITHOUT clip skip (uncond = last_hidden_state)")
        notes.append(f"without clip skip the PNG differs by up to {noskip_u8}/255; the prompt embedding by up to {skip_effect:.3f}")
        pngs[case["name"]] = png
        if case["uncond_skip"]:
            other = case["name"].removesuffix("-a1111")
            notes.append(f"differs from {other} (same case, diffusers semantics) by up to {int(np.abs(png - pngs[other]).max())}/255")
        clip_skip = dict(
            clip_skip_a1111=CLIP_SKIP_DIFFUSERS + 1,
            clip_skip_diffusers=CLIP_SKIP_DIFFUSERS,
            negative_clip_skip_a1111=(CLIP_SKIP_DIFFUSERS + 1 if case["uncond_skip"] else 1) if cfg_on else None,
            cond_output=penult,
            uncond_output=(penult if case["uncond_skip"] else "last_hidden_state") if cfg_on else None,
            embeddings=embeddings,
            num_hidden_layers=n_layers,
            layer_norm_eps=eps,
        )
        manifest.append(reference_entry(case, f"clipskip/models/{NAME}", noise_path, None, img_path, "; ".join(notes),
                                        before_notes=clip_skip))
        log(f"  {case['name']:<20} ORT-path embeddings vs diffusers {emb_err:.1e}; ORT pipeline vs PNG u8 mean {chk['mean_u8']:.4f} "
            f"max {chk['max_u8']:.0f}, float*255 max {chk['max_f']:.4f}; no-clip-skip image differs by up to {noskip_u8}/255")

    log("== summary")
    log(f"  text encoder outputs (order): {out_names}; layers {n_layers}; layer_norm_eps {eps}")
    log(f"  recovery errors: gamma {rec_err[0]:.2e} beta {rec_err[1]:.2e} (sd1-tiny), gamma {rec_err_r[0]:.2e} beta {rec_err_r[1]:.2e} (random LN); "
        f"penultimate embedding vs diffusers max {max(c['emb_err'] for c in checks):.2e}")
    log("  " + ENCODE_PROMPT_SEMANTICS)
    finish(OUT, manifest)


if __name__ == "__main__":
    main()
