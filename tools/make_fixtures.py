#!/usr/bin/env python3
"""Regenerate easel's test fixtures under tests/fixtures/.

Run from the repository root:

    .venv-tools/bin/python tools/make_fixtures.py            # everything
    .venv-tools/bin/python tools/make_fixtures.py --skip-ort # no ORT-vs-PyTorch comparison

Everything is built locally from configs in code with seeded random weights; nothing is
downloaded. See tools/README.md for what each fixture is and the measured diffs.

Stages (all re-run every time, outputs are overwritten):
  1. tokenizer/  CLIP BPE vocabularies (full + truncated) and cases.json
  2. models/     tiny SD1/SD2-like pipelines exported with optimum, plus hand-edited variants
  3. references/ diffusers PyTorch pipeline outputs (+ ORT pipeline comparison)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

# Number of BPE merges kept for the tiny models' vocabulary (CLIP ranks them by frequency,
# so the first merges are the most common: "t h", "i n", "a n", ...).
TINY_MERGES = 1000
MAX_LEN = 77

# Scheduler configs exactly as the real models ship them (keys absent take class defaults,
# exactly as diffusers' from_config does for a file read from disk).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json (DDIM + v_prediction; it
# carries a stray "skip_prk_steps" and no "timestep_spacing", so DDIM uses "leading" and
# Euler/DPM/Heun fall back to their own default "linspace").
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
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
}

SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
# scheduler module whose `randn_tensor` draws per-step noise, per sampler
STOCHASTIC = {
    "euler_a": "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "lcm": "diffusers.schedulers.scheduling_lcm",
}


def log(*a):
    print(*a, flush=True)


def write_json(path: Path, obj, indent=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------
# 1. Tokenizer
# --------------------------------------------------------------------------------------


def bytes_to_unicode():
    """CLIP's (and GPT-2's) reversible byte -> unicode char map (same order as CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_bpe(n_merges: int | None):
    """(vocab list, merges list) exactly as CLIP's SimpleTokenizer builds them."""
    import open_clip.tokenizer

    path = open_clip.tokenizer.default_bpe()
    merges = gzip.open(path).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    if n_merges is not None:
        merges = merges[:n_merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(set(vocab)) == len(vocab)
    return vocab, merges


def write_bpe(folder: Path, vocab, merges):
    """vocab.json (one line, in id order, like openai/clip-vit-large-patch14 on the Hub) and
    merges.txt ("#version: 0.2" header, one merge per line, by rank)."""
    folder.mkdir(parents=True, exist_ok=True)
    enc = {t: i for i, t in enumerate(vocab)}
    (folder / "vocab.json").write_text(json.dumps(enc, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def make_slow_tokenizer(folder: Path, pad: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=MAX_LEN,  # without it diffusers pads to a huge length
        pad_token=pad,
    )


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
# 2. Models
# --------------------------------------------------------------------------------------

MODEL_SPECS = {
    "sd1-tiny": dict(
        seed=1,
        scheduler=SD15_SCHEDULER,
        pad="<|endoftext|>",
        hidden_act="quick_gelu",  # OpenAI CLIP ViT-L/14
        use_linear_projection=False,  # SD1: 1x1 conv proj_in/proj_out
        vae_blocks=(8, 8, 16, 16),  # factor 8
        scaling_factor=0.18215,
        unet_sample=8,
    ),
    "sd2-tiny-v": dict(
        seed=2,
        scheduler=SD21_SCHEDULER,
        pad="!",
        hidden_act="gelu",  # OpenCLIP ViT-H/14
        use_linear_projection=True,  # SD2: linear proj_in/proj_out
        vae_blocks=(8, 16, 16),  # factor 4
        scaling_factor=0.13025,
        unet_sample=16,
    ),
}


def build_pipeline(name: str, spec: dict, tok_dir: Path):
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_slow_tokenizer(tok_dir, spec["pad"])
    vocab = len(tokenizer.get_vocab())
    torch.manual_seed(spec["seed"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LEN,
            hidden_act=spec["hidden_act"],
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=1,
            projection_dim=32,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=spec["unet_sample"],
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=spec["use_linear_projection"],
    ).eval()
    # Random init predicts noise with std ~0.33; a trained UNet predicts ~unit variance.
    # Scale the output conv so the UNet moves the latents like a real one (and the reference
    # images depend strongly on every step being right). Still a plain UNet2DConditionModel.
    with torch.no_grad():
        unet.conv_out.weight.mul_(3.0)
        unet.conv_out.bias.mul_(3.0)
    nb = len(spec["vae_blocks"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * nb,
        up_block_types=("UpDecoderBlock2D",) * nb,
        block_out_channels=spec["vae_blocks"],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=spec["unet_sample"] * 2 ** (nb - 1),
        scaling_factor=spec["scaling_factor"],
    ).eval()
    # the model's own scheduler class (model_index.json names it; optimum re-saves it by it)
    scheduler = getattr(diffusers, spec["scheduler"]["_class_name"]).from_config(dict(spec["scheduler"]))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def onnx_signature(path: Path):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    et = {v: k for k, v in onnx.TensorProto.DataType.items()}

    def desc(vi):
        tt = vi.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        return {"name": vi.name, "dtype": et[tt.elem_type].lower(), "shape": dims}

    return {
        "inputs": [desc(i) for i in m.graph.input],
        "outputs": [desc(o) for o in m.graph.output],
        "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in m.opset_import],
    }


def export_model(name: str, spec: dict, tok_dir: Path, work: Path, out: Path):
    log(f"== model {name}")
    pipe = build_pipeline(name, spec, tok_dir)
    ddir = work / "diffusers" / name
    if ddir.exists():
        shutil.rmtree(ddir)
    pipe.save_pretrained(ddir)
    write_json(ddir / "scheduler" / "scheduler_config.json", spec["scheduler"])
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "optimum.exporters.onnx", "--model", str(ddir), "--task", "text-to-image", str(out)]
    log("  $ " + " ".join(cmd[1:]))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stdout[-5000:], r.stderr[-5000:])
        raise SystemExit(f"optimum export of {name} failed")
    exported_sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    # configs record the (temporary) folder they were loaded from; make them reproducible
    for p in sorted(out.rglob("*.json")):
        d = json.loads(p.read_text())
        if isinstance(d, dict) and "_name_or_path" in d:
            sub = p.parent.relative_to(out).as_posix()
            d["_name_or_path"] = f"easel-fixtures/{name}" + ("" if sub == "." else f"/{sub}")
            write_json(p, d)
    # optimum re-saves the scheduler with every key filled in (class defaults included);
    # ship the config exactly as the real model does instead.
    write_json(out / "scheduler" / "scheduler_config.json", spec["scheduler"])
    return ddir, exported_sched


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def verify_model(name: str, ddir: Path, mdir: Path, base_ddir: Path | None = None):
    """Run each ONNX sub-model with onnxruntime and the PyTorch module on the same inputs."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    src = base_ddir or ddir
    te = CLIPTextModel.from_pretrained(src / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(src / "unet").eval()
    vae = AutoencoderKL.from_pretrained(src / "vae").eval()
    rng = np.random.default_rng(1234)
    diffs = {}
    vocab = te.config.vocab_size

    def feed(sess, arrays):
        feeds = {}
        for i in sess.get_inputs():
            a = arrays[i.name]
            want = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}[i.type]
            a = np.asarray(a).astype(want)
            if len(i.shape) == 1 and a.ndim == 0:  # [B] timestep
                a = np.full((arrays["_batch"],), a, dtype=want)
            feeds[i.name] = a
        return feeds

    with torch.no_grad():
        ids = rng.integers(0, vocab, size=(2, MAX_LEN)).astype(np.int64)
        ids[:, -1] = vocab - 1
        ref = te(torch.from_numpy(ids))
        s = ort_session(mdir / "text_encoder" / "model.onnx")
        o = dict(zip([x.name for x in s.get_outputs()], s.run(None, feed(s, {"input_ids": ids, "_batch": 2}))))
        diffs["text_encoder"] = max(
            float(np.abs(o["last_hidden_state"] - ref.last_hidden_state.numpy()).max()),
            float(np.abs(o["pooler_output"] - ref.pooler_output.numpy()).max()),
        )

        h = unet.config.sample_size
        sample = rng.standard_normal((2, unet.config.in_channels, h, h), dtype=np.float32)  # 4, or 9 for inpainting UNets
        ehs = rng.standard_normal((2, MAX_LEN, 32), dtype=np.float32)
        t = np.array(421, dtype=np.float32)
        ref = unet(torch.from_numpy(sample), torch.tensor(421.0), torch.from_numpy(ehs)).sample.numpy()
        s = ort_session(mdir / "unet" / "model.onnx")
        o = s.run(None, feed(s, {"sample": sample, "timestep": t, "encoder_hidden_states": ehs, "_batch": 2}))[0]
        diffs["unet"] = float(np.abs(o - ref).max())

        f = 2 ** (len(vae.config.block_out_channels) - 1)
        z = rng.standard_normal((1, 4, h, h), dtype=np.float32)
        ref = vae.decode(torch.from_numpy(z)).sample.numpy()
        s = ort_session(mdir / "vae_decoder" / "model.onnx")
        o = s.run(None, feed(s, {"latent_sample": z, "_batch": 1}))[0]
        diffs["vae_decoder"] = float(np.abs(o - ref).max())

        x = rng.uniform(-1, 1, size=(1, 3, h * f, h * f)).astype(np.float32)
        ref = vae.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
        s = ort_session(mdir / "vae_encoder" / "model.onnx")
        outs = [x_.name for x_ in s.get_outputs()]
        o = s.run(None, feed(s, {"sample": x, "_batch": 1}))[0]
        assert outs == ["latent_parameters"], outs
        diffs["vae_encoder"] = float(np.abs(o - ref).max())
    log(f"  ORT vs PyTorch max abs diff ({name}): " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    for k, v in diffs.items():
        assert v < 1e-3, (name, k, v)
    return diffs


# ---- graph edits for the variants ----


def _rewire_input(graph, old_name: str, new_name: str):
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n == old_name:
                node.input[i] = new_name


def variant_ids_int32(model):
    """text_encoder `input_ids` int32 (a Cast to int64 feeds the original graph)."""
    import onnx
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
    neg = "blurry, low quality"
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


class NoiseTape:
    """Replaces `randn_tensor` in a scheduler module: hands out float32 N(0,1) numpy noise,
    drawn fresh (record) or replayed from a saved sequence, in draw order."""

    def __init__(self, module_name: str, rng=None, replay=None):
        import importlib

        self.mod = importlib.import_module(module_name)
        self.rng = rng
        self.replay = list(replay) if replay is not None else None
        self.drawn = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        import torch

        shape = tuple(shape)
        if self.replay is not None:
            a = self.replay[len(self.drawn)]
            assert a.shape == shape, (a.shape, shape)
        else:
            a = self.rng.standard_normal(shape, dtype=np.float32)
        self.drawn.append(a)
        return torch.from_numpy(a.copy()).to(device=device or "cpu", dtype=dtype or torch.float32)

    def __enter__(self):
        self.orig = self.mod.randn_tensor
        self.mod.randn_tensor = self
        return self

    def __exit__(self, *a):
        self.mod.randn_tensor = self.orig


def make_scheduler(sampler: str, sched_file: Path):
    import diffusers

    cls_name, extra = SAMPLERS[sampler]
    cfg = json.load(open(sched_file))  # from the file on disk: no _use_default_values
    return getattr(diffusers, cls_name).from_config(cfg, **extra)


def run_pipe(pipe, case, noise, sched_file, tape_kwargs):
    import torch

    pipe.scheduler = make_scheduler(case["sampler"], sched_file)
    tape = None
    kw = dict(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"] or None,
        width=case["width"],
        height=case["height"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        latents=torch.from_numpy(noise.copy()),
        output_type="np",
    )
    if case["sampler"] in STOCHASTIC:
        tape = NoiseTape(STOCHASTIC[case["sampler"]], **tape_kwargs)
        with tape, torch.no_grad():
            img = pipe(**kw).images[0]
    else:
        with torch.no_grad():
            img = pipe(**kw).images[0]
    return img, tape


def to_pil(img):
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pil(img[None])[0]


def stage_references(out: Path, ddirs: dict, skip_ort: bool):
    import torch
    from diffusers import StableDiffusionPipeline

    log("== references")
    rdir = out / "references"
    if rdir.exists():
        shutil.rmtree(rdir)
    for sub in ("noise", "images", "embeddings"):
        (rdir / sub).mkdir(parents=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    cases = build_cases()
    pt_pipes = {}
    ort_pipes = {}

    def pt_pipe(model):
        base = "sd1-tiny" if model.startswith("sd1-tiny") else model
        if base not in pt_pipes:
            pt_pipes[base] = StableDiffusionPipeline.from_pretrained(ddirs[base], safety_checker=None, requires_safety_checker=False)
            pt_pipes[base].set_progress_bar_config(disable=True)
        return pt_pipes[base]

    def ort_pipe(model):
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        if model not in ort_pipes:
            p = ORTStableDiffusionPipeline.from_pretrained(out / "models" / model, provider="CPUExecutionProvider")
            p.set_progress_bar_config(disable=True)
            ort_pipes[model] = p
        return ort_pipes[model]

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
        pil.save(out / img_path, optimize=False)
        step_noise_path = None
        notes = case["notes"]
        if tape is not None and tape.drawn:
            step_noise_path = f"references/noise/{case['name']}.steps.npy"
            np.save(out / step_noise_path, np.stack(tape.drawn).astype(np.float32))
            notes = (notes + "; " if notes else "") + (
                f"step_noise: the {len(tape.drawn)} noises scheduler.step drew (randn_tensor), in draw order"
            )
        entry = dict(
            name=case["name"],
            model=f"models/{model}",
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
            notes=notes,
        )
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
            opil = np.asarray(to_pil(oimg)).astype(np.float32)
            d8 = np.abs(opil - arr)
            df = np.abs(oimg.astype(np.float64) - img.astype(np.float64)) * 255.0
            rec = dict(name=case["name"], sampler=case["sampler"], mean_u8=float(d8.mean()), max_u8=float(d8.max()), mean_f=float(df.mean()), max_f=float(df.max()))
            diffs.append(rec)
            line += f"  ORT-vs-PT u8 mean {rec['mean_u8']:.4f} max {rec['max_u8']:.0f}  float*255 mean {rec['mean_f']:.5f} max {rec['max_f']:.4f}"
        log(line)
        manifest.append(entry)

    write_json(rdir / "manifest.json", manifest)
    return manifest, diffs


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIX, help="fixtures folder (default tests/fixtures)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for the diffusers checkpoints (default: a temp dir)")
    ap.add_argument("--skip-ort", action="store_true", help="skip the ORT-pipeline-vs-PyTorch comparison")
    args = ap.parse_args()

    import torch

    torch.use_deterministic_algorithms(True)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="easel-fixtures-")
        work = Path(tmp.name)
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
            ins = ", ".join(f"{i['name']}:{i['dtype']}{i['shape']}" for i in s["inputs"])
            outs = ", ".join(f"{o['name']}:{o['dtype']}{o['shape']}" for o in s["outputs"])
            log(f"  {name}/{part}: ({ins}) -> ({outs})")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    uniq = {}
    for p in out.rglob("*"):
        if p.is_file():
            uniq[sha(p)] = p.stat().st_size
    log(f"== fixtures: {total/1e6:.2f} MB on disk, {sum(uniq.values())/1e6:.2f} MB unique content")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
