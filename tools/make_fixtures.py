#!/usr/bin/env python3
"""Regenerate easel's test fixtures under tests/fixtures/.

Run from the repository root:

    .venv-tools/bin/python tools/make_fixtures.py            # everything
    .venv-tools/bin/python tools/make_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

Everything is built locally from configs in code (tools/common.py, tools/configs/) with seeded
random weights; nothing is downloaded. See tools/README.md for what each fixture is and the
measured diffs.

Stages (all re-run every time, outputs are overwritten):
  1. tokenizer/  CLIP BPE vocabularies (full + truncated) and cases.json
  2. models/     tiny SD1/SD2-like pipelines exported with optimum, plus hand-edited variants
  3. references/ diffusers PyTorch pipeline outputs (+ ORT pipeline comparison)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, MAX_LEN, MODEL_SPECS, NEGATIVE, build_pipeline, cached_pipelines, clip_bpe, describe_signature,
    disk_and_new_bytes, fixture_args, fresh_dir, log, make_scheduler, make_slow_tokenizer, onnx_signature,
    optimum_export, ort_vs_pt, reference_entry, run_pipe, save_diffusers, save_png, scratch_dir,
    set_name_or_path, to_pil, torch_setup, verify_model, write_bpe, write_json,
)

# Number of BPE merges kept for the tiny models' vocabulary (CLIP ranks them by frequency,
# so the first merges are the most common: "t h", "i n", "a n", ...).
TINY_MERGES = 1000


# --------------------------------------------------------------------------------------
# 1. Tokenizer (the BPE construction itself is common.clip_bpe, shared with tiny_shapes/export.py)
# --------------------------------------------------------------------------------------


TOKENIZER_PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A Horse",
    "hello, world! how are you?",
    "a cat; a dog: (a bird) [a fish] {a frog}",
    "3 apples and 42 oranges, 1234567 grapes, 3.14159",
    "it's the cat's toy, don't touch it, they're here, we've, i'll, i'd, i'm",
    "IT'S DON'T THEY'RE",
    "multiple   spaces\tand\ttabs",
    "line one\nline two\n\nline three",
    "  leading and trailing spaces  ",
    "café crème brûlée",
    "naïve résumé façade",
    "Ünïcödé ÅNGSTRÖM straße",
    "東京の夜景、美しい",
    "一只猫",
    "a cute dog 🐶 with a hat",
    "rocket 🚀🚀 launch ✨",
    "hello!!! world???",
    "!",
    "",
    "masterpiece, best quality, highly detailed, 8k, trending on artstation",
    "low quality, blurry, bad anatomy, extra fingers",
    "a_b-c/d\\e|f~g`h",
    "email@example.com http://x.y/z?q=1&r=2",
    "don’t curly “quotes” — dash",
    "&amp; &lt;tag&gt; html entities",
    "tokenization of unbelievably antidisestablishmentarianism",
    "über ñandú Ωμέγα кошка",
    "(((masterpiece))), [[[worst quality]]], <lora:foo:0.8>",
    ", ".join(["a very long prompt about a castle on a hill at sunset with dramatic clouds"] * 6),
]


def stage_tokenizer(out: Path):
    log("== tokenizer")
    tdir = out / "tokenizer"
    if tdir.exists():
        shutil.rmtree(tdir)
    full_v, full_m = clip_bpe(None)
    tiny_v, tiny_m = clip_bpe(TINY_MERGES)
    assert len(full_v) == 49408, len(full_v)
    write_bpe(tdir / "clip-full", full_v, full_m)
    write_bpe(tdir / "clip-tiny", tiny_v, tiny_m)

    from transformers import CLIPTokenizerFast

    toks = {
        "full": make_slow_tokenizer(tdir / "clip-full", "<|endoftext|>"),
        "tiny": make_slow_tokenizer(tdir / "clip-tiny", "<|endoftext|>"),
        "full_sd2": make_slow_tokenizer(tdir / "clip-full", "!"),
        "tiny_sd2": make_slow_tokenizer(tdir / "clip-tiny", "!"),
    }
    ftfy_used = toks["full"].fix_text is not None
    fast = CLIPTokenizerFast(
        vocab_file=str(tdir / "clip-full" / "vocab.json"),
        merges_file=str(tdir / "clip-full" / "merges.txt"),
        model_max_length=MAX_LEN,
        from_slow=False,
    )
    cases = []
    fast_mismatch = []
    sd2_mismatch = []
    for p in TOKENIZER_PROMPTS:
        c = {"prompt": p}
        for k in ("full", "tiny"):
            c[f"ids_{k}"] = toks[k](p, truncation=True, max_length=MAX_LEN)["input_ids"]
            c[f"tokens_{k}"] = toks[k].convert_ids_to_tokens(c[f"ids_{k}"])
        for k in ("full", "tiny"):
            ids2 = toks[k + "_sd2"](p, truncation=True, max_length=MAX_LEN)["input_ids"]
            if ids2 != c[f"ids_{k}"]:
                c[f"ids_{k}_sd2"] = ids2
                sd2_mismatch.append((k, p))
        f_ids = fast(p, truncation=True, max_length=MAX_LEN)["input_ids"]
        if f_ids != c["ids_full"]:
            c["ids_full_fast_tokenizer"] = f_ids
            fast_mismatch.append(p)
        cases.append(c)
    # cross-check against OpenAI CLIP's own tokenizer (open_clip's SimpleTokenizer)
    import open_clip.tokenizer

    simple = open_clip.tokenizer.SimpleTokenizer()
    open_clip_mismatch = [c["prompt"] for c in cases if [len(full_v) - 2] + simple.encode(c["prompt"])[: MAX_LEN - 2] + [len(full_v) - 1] != c["ids_full"]]
    pad_prompt = "a photograph of an astronaut riding a horse"
    padded = {}
    for k, t in toks.items():
        padded[k] = t(pad_prompt, padding="max_length", truncation=True, max_length=MAX_LEN)["input_ids"]
    doc = {
        "about": (
            "Token ids from transformers' slow CLIPTokenizer (what diffusers uses), "
            "called as tok(prompt, truncation=True, max_length=77) without padding. "
            "ids_full: full CLIP vocabulary (tokenizer/clip-full, 49408 tokens); ids_tiny: the "
            f"vocabulary truncated to the first {TINY_MERGES} merges (tokenizer/clip-tiny, "
            f"{len(tiny_v)} tokens; what the tiny models ship). ids_*_sd2 appears only where "
            "a tokenizer with pad_token '!' (SD2) gives different ids: transformers treats the pad "
            "token as special and splits the text on it. ids_full_fast_tokenizer appears only where "
            "CLIPTokenizerFast (the `tokenizers` library; no ftfy) disagrees with the slow one."
        ),
        "ftfy_used": ftfy_used,
        "ids_full_match_open_clip_simple_tokenizer": not open_clip_mismatch,
        "transformers_version": __import__("transformers").__version__,
        "ftfy_version": __import__("ftfy").__version__ if ftfy_used else None,
        "max_length": MAX_LEN,
        "vocab_size": {"full": len(full_v), "tiny": len(tiny_v)},
        "special_ids": {
            "full": {"bos": len(full_v) - 2, "eos": len(full_v) - 1, "pad_sd2": 0},
            "tiny": {"bos": len(tiny_v) - 2, "eos": len(tiny_v) - 1, "pad_sd2": 0},
        },
        "cases": cases,
        "padded": {
            "prompt": pad_prompt,
            "about": "padding='max_length', truncation=True, max_length=77. *_sd2: pad_token '!' (id 0); others pad with <|endoftext|>.",
            "ids": padded,
        },
    }
    write_json(tdir / "cases.json", doc, indent=1)
    log(f"  open_clip SimpleTokenizer mismatches (full vocab): {len(open_clip_mismatch)}")
    log(f"  ftfy used: {ftfy_used}; fast-vs-slow mismatches: {len(fast_mismatch)}; sd2-pad mismatches: {len(sd2_mismatch)}")
    for p in fast_mismatch:
        log(f"    fast differs: {p!r}")
    for k, p in sd2_mismatch:
        log(f"    sd2 pad differs ({k}): {p!r}")
    return {"ftfy_used": ftfy_used, "fast_mismatch": fast_mismatch, "sd2_mismatch": sd2_mismatch}


# --------------------------------------------------------------------------------------
# 2. Models (their specs, seeds and builder are common.MODEL_SPECS / build_pipeline: every
#    other fixture script rebuilds them from there)
# --------------------------------------------------------------------------------------


def export_model(name: str, spec: dict, tok_dir: Path, work: Path, out: Path):
    log(f"== model {name}")
    pipe = build_pipeline(name, spec, tok_dir)
    ddir = work / "diffusers" / name
    if ddir.exists():
        shutil.rmtree(ddir)
    save_diffusers(pipe, ddir, spec["scheduler"])
    if out.exists():
        shutil.rmtree(out)
    optimum_export(ddir, out, name)
    exported_sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    set_name_or_path(out, f"easel-fixtures/{name}")
    # optimum re-saves the scheduler with every key filled in (class defaults included);
    # ship the config exactly as the real model does instead.
    write_json(out / "scheduler" / "scheduler_config.json", spec["scheduler"])
    return ddir, exported_sched


# ---- graph edits for the variants ----


def _rewire_input(graph, old_name: str, new_name: str):
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n == old_name:
                node.input[i] = new_name


def variant_ids_int32(model):
    """text_encoder `input_ids` int32 (a Cast to int64 feeds the original graph)."""
    from onnx import TensorProto, helper

    g = model.graph
    inp = next(i for i in g.input if i.name == "input_ids")
    assert inp.type.tensor_type.elem_type == TensorProto.INT64
    _rewire_input(g, "input_ids", "input_ids_as_int64")
    inp.type.tensor_type.elem_type = TensorProto.INT32
    g.node.insert(0, helper.make_node("Cast", ["input_ids"], ["input_ids_as_int64"], name="easel_fixture_cast_input_ids", to=TensorProto.INT64))
    return model


def _variant_timestep_vector(model, elem_type, dim_name):
    """unet `timestep` of shape [dim_name] and type elem_type; its first element, cast to
    float and reshaped to a 0-d scalar, feeds the original graph (which broadcasts the
    scalar over the batch, as the [B]/[1] forms did)."""
    from onnx import TensorProto, helper

    g = model.graph
    inp = next(i for i in g.input if i.name == "timestep")
    tt = inp.type.tensor_type
    assert tt.elem_type == TensorProto.FLOAT and len(tt.shape.dim) == 0, "expected a 0-d float timestep"
    _rewire_input(g, "timestep", "timestep_scalar")
    tt.elem_type = elem_type
    d = tt.shape.dim.add()
    d.dim_param = dim_name
    nodes = []
    src = "timestep"
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [src], ["timestep_as_float"], name="easel_fixture_cast_timestep", to=TensorProto.FLOAT))
        src = "timestep_as_float"
    g.initializer.append(helper.make_tensor("easel_fixture_index0", TensorProto.INT64, [], [0]))
    # Gather with a 0-d index on axis 0: [B] -> [] (the first element)
    nodes.append(helper.make_node("Gather", [src, "easel_fixture_index0"], ["timestep_scalar"], name="easel_fixture_first_timestep", axis=0))
    for n in reversed(nodes):
        g.node.insert(0, n)
    return model


def variant_t_int64(model):
    from onnx import TensorProto

    return _variant_timestep_vector(model, TensorProto.INT64, "steps")


def variant_t_float_b(model):
    from onnx import TensorProto

    return _variant_timestep_vector(model, TensorProto.FLOAT, "batch")


VARIANTS = {
    "sd1-tiny-ids-int32": ("text_encoder", variant_ids_int32, "text_encoder input_ids is int32 (Cast to int64 inside)"),
    "sd1-tiny-t-int64": ("unet", variant_t_int64, "unet timestep is int64 of shape [steps] (older optimum)"),
    "sd1-tiny-t-float-b": ("unet", variant_t_float_b, "unet timestep is float32 of shape [batch] (legacy diffusers script)"),
}


def make_variant(vname: str, base: Path, out: Path):
    import onnx

    part, fn, _ = VARIANTS[vname]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    p = out / part / "model.onnx"
    m = onnx.load(str(p))
    m = fn(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(p))
    log(f"== variant {vname}: edited {part}/model.onnx")


# --------------------------------------------------------------------------------------
# 3. References
# --------------------------------------------------------------------------------------


def build_cases():
    neg = NEGATIVE
    cases = []

    def add(name, model, sampler, steps, cfg, w=64, h=64, prompt="a photograph of an astronaut riding a horse", negative=None, notes=""):
        if negative is None:
            negative = neg if cfg > 1 else ""
        cases.append(
            dict(name=name, model=model, prompt=prompt, negative_prompt=negative, width=w, height=h, steps=steps, guidance_scale=cfg, sampler=sampler, notes=notes)
        )

    order = ["euler", "euler_a", "ddim", "pndm", "dpmpp_2m", "dpmpp_2m_karras", "lcm", "heun"]
    steps_for = {"euler": 10, "euler_a": 10, "ddim": 10, "pndm": 10, "dpmpp_2m": 10, "dpmpp_2m_karras": 12, "lcm": 4, "heun": 8}
    for s in order:
        add(f"sd1-{s}-cfg", "sd1-tiny", s, steps_for[s], 7.5)
    for s in order:
        add(f"sd1-{s}-nocfg", "sd1-tiny", s, steps_for[s], 1.0, prompt="a red cube on a table")
    for s in order:
        add(f"sd2-{s}-cfg", "sd2-tiny-v", s, steps_for[s], 7.5, prompt="a watercolor painting of a fox in the snow")
    add("sd1-lcm-1step", "sd1-tiny", "lcm", 1, 1.0, prompt="a lighthouse at dusk", notes="1-step LCM draws no step noise")
    add("sd1-euler-1step", "sd1-tiny", "euler", 1, 7.5, prompt="a lighthouse at dusk")
    add("sd1-ddim-1step", "sd1-tiny", "ddim", 1, 7.5, prompt="a lighthouse at dusk")
    add("sd1-dpmpp_2m-64x48", "sd1-tiny", "dpmpp_2m", 10, 7.5, w=64, h=48, prompt="a wide landscape, mountains and a lake")
    add("sd2-euler-48x80", "sd2-tiny-v", "euler", 10, 7.5, w=48, h=80, prompt="a tall tower, portrait orientation")
    add("sd2-ddim-nocfg", "sd2-tiny-v", "ddim", 10, 1.0, prompt="a tall tower")
    for v, (_, _, note) in VARIANTS.items():
        add(f"{v}-euler", v, "euler", 10, 7.5, prompt="a bowl of fruit, still life", notes=f"variant: {note}; same function as sd1-tiny")
    return cases


def stage_references(out: Path, ddirs: dict, skip_ort: bool):
    import torch
    from diffusers import StableDiffusionPipeline

    log("== references")
    rdir = out / "references"
    fresh_dir(rdir, ("noise", "images", "embeddings"))

    cases = build_cases()

    # the variants compute sd1-tiny's function: its PyTorch pipeline is their reference
    pt_pipe, ort_pipe = cached_pipelines(
        StableDiffusionPipeline, lambda model: ddirs["sd1-tiny" if model.startswith("sd1-tiny") else model],
        "ORTStableDiffusionPipeline", lambda model: out / "models" / model,
    )

    manifest = []
    diffs = []
    emb_budget = 2  # cases whose text embeddings are saved
    checked_pil = False
    for idx, case in enumerate(cases):
        model = case["model"]
        mdir = out / "models" / model
        sched_file = mdir / "scheduler" / "scheduler_config.json"
        vae_cfg = json.loads((mdir / "vae_decoder" / "config.json").read_text())
        f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        shape = (1, 4, case["height"] // f, case["width"] // f)
        rng = np.random.default_rng(1000 + idx)
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise_path = f"references/noise/{case['name']}.npy"
        np.save(out / noise_path, noise)

        pipe = pt_pipe(model)
        img, tape = run_pipe(pipe, case, noise, sched_file, {"rng": np.random.default_rng(5000 + idx)})
        pil = to_pil(img)
        if not checked_pil:  # output_type="np" + numpy_to_pil is what output_type="pil" does
            pipe.scheduler = make_scheduler(case["sampler"], sched_file)
            with torch.no_grad():
                direct = pipe(
                    prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None, width=case["width"], height=case["height"],
                    num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"], latents=torch.from_numpy(noise.copy()), output_type="pil",
                ).images[0]
            assert np.array_equal(np.asarray(direct), np.asarray(pil)), "np->pil path differs from output_type=pil"
            checked_pil = True
        img_path = f"references/images/{case['name']}.png"
        save_png(out / img_path, pil)
        step_noise_path = None
        notes = case["notes"]
        if tape is not None and tape.drawn:
            step_noise_path = f"references/noise/{case['name']}.steps.npy"
            np.save(out / step_noise_path, np.stack(tape.drawn).astype(np.float32))
            notes = (notes + "; " if notes else "") + (
                f"step_noise: the {len(tape.drawn)} noises scheduler.step drew (randn_tensor), in draw order"
            )
        entry = reference_entry(case, f"models/{model}", noise_path, step_noise_path, img_path, notes)
        if emb_budget > 0 and case["guidance_scale"] > 1 and not model.endswith(("int32", "int64", "float-b")):
            with torch.no_grad():
                cond, uncond = pipe.encode_prompt(case["prompt"], "cpu", 1, True, case["negative_prompt"] or None)
            entry["embeddings"] = {
                "cond": f"references/embeddings/{case['name']}.cond.npy",
                "uncond": f"references/embeddings/{case['name']}.uncond.npy",
            }
            np.save(out / entry["embeddings"]["cond"], cond.numpy().astype(np.float32))
            np.save(out / entry["embeddings"]["uncond"], uncond.numpy().astype(np.float32))
            emb_budget -= 1

        arr = np.asarray(pil).astype(np.float32)
        line = f"  {case['name']:<28} std {arr.std():6.1f}"
        if not skip_ort:
            replay = tape.drawn if tape is not None else None
            oimg, otape = run_pipe(ort_pipe(model), case, noise, sched_file, {"replay": replay})
            if otape is not None:
                assert len(otape.drawn) == len(tape.drawn), "ORT pipeline drew a different number of step noises"
            line += ort_vs_pt(diffs, case, img, pil, oimg)
        log(line)
        manifest.append(entry)

    write_json(rdir / "manifest.json", manifest)
    return manifest, diffs


# --------------------------------------------------------------------------------------


def main():
    ap = fixture_args(__doc__, skip_ort=True)
    ap.add_argument("--out", type=Path, default=FIX, help="fixtures folder (default tests/fixtures)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for the diffusers checkpoints (default: a temp dir)")
    args = ap.parse_args()

    torch_setup()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.work is None:
        work = scratch_dir("easel-fixtures-")
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)

    tok = stage_tokenizer(out)
    tok_dir = out / "tokenizer" / "clip-tiny"

    mroot = out / "models"
    mroot.mkdir(exist_ok=True)
    ddirs, exported_sched, sigs, verify = {}, {}, {}, {}
    for name, spec in MODEL_SPECS.items():
        ddirs[name], exported_sched[name] = export_model(name, spec, tok_dir, work, mroot / name)
        verify[name] = verify_model(name, ddirs[name], mroot / name)
    for vname in VARIANTS:
        make_variant(vname, mroot / "sd1-tiny", mroot / vname)
        verify[vname] = verify_model(vname, ddirs["sd1-tiny"], mroot / vname)
    for name in list(MODEL_SPECS) + list(VARIANTS):
        sigs[name] = {part: onnx_signature(mroot / name / part / "model.onnx") for part in ("text_encoder", "unet", "vae_decoder", "vae_encoder")}

    manifest, diffs = stage_references(out, ddirs, args.skip_ort)

    info = dict(
        tokenizer=tok,
        exported_scheduler_config=exported_sched,
        signatures=sigs,
        onnx_vs_torch_max_abs=verify,
        ort_pipeline_vs_pytorch=diffs,
        versions={m: __import__(m).__version__ for m in ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "numpy")},
    )
    if args.work is not None:  # machine-readable summary for tools/README.md
        write_json(work / "report.json", info)
    log("== signatures")
    for name, parts in sigs.items():
        for part, s in parts.items():
            log(f"  {name}/{part}: {describe_signature(s)}")
    total, unique = disk_and_new_bytes(out)
    log(f"== fixtures: {total/1e6:.2f} MB on disk, {unique/1e6:.2f} MB unique content")


if __name__ == "__main__":
    main()
