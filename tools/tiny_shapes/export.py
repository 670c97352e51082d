#!/usr/bin/env python3
"""Turn diffusers-format tiny-shapes weights into an easel model folder (optimum's ONNX layout).

    .venv-tools/bin/python tools/tiny_shapes/export.py WEIGHTS_DIR OUT_DIR [--check] [--smoke DIR]

WEIGHTS_DIR holds `text_encoder/`, `unet/`, `vae/` and `scheduler/` as diffusers and
transformers save them (e.g. /work/shared/models/tiny-shapes-reference, or what
tools/tiny_shapes/train.py writes). Weights may be float16; they are loaded as float32 and the
ONNX export is float32 throughout.

Steps:
  1. tokenizer: the full CLIP BPE vocabulary (49,408 tokens) built from OpenAI's
     `bpe_simple_vocab_16e6.txt.gz` (shipped by open_clip), padded with `<|endoftext|>`,
     model_max_length 77 - the same construction as tools/make_fixtures.py;
  2. a diffusers `StableDiffusionPipeline` (no safety checker) saved with save_pretrained;
  3. `python -m optimum.exporters.onnx --model DIR --task text-to-image OUT_DIR`;
  4. the ORIGINAL scheduler_config.json copied back over the one optimum re-saved (optimum
     fills in every class default), and the temporary folder names that configs record
     replaced by a fixed name, so two runs give byte-identical folders.

--check runs every ONNX sub-model against its PyTorch module; --smoke DIR also draws four
captions with optimum's ORTStableDiffusionPipeline (DDIM, 20 steps, guidance 7.5) into DIR.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

# The CLIP BPE construction and the export steps are shared with the fixture scripts
# (importing common also sets HF_HUB_OFFLINE etc.).
from common import (  # noqa: E402
    MAX_LEN, assemble_pipeline, clip_bpe, describe_signature, log, make_slow_tokenizer, onnx_signature,
    optimum_export, ort_session, scheduler_from_config, set_name_or_path, write_bpe,
)

MODEL_NAME = "easel/tiny-shapes"  # written into configs instead of temporary folder names
PARTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")

SMOKE_PROMPTS = [
    ("a red circle on a blue background", ""),
    ("a yellow triangle on a purple background", ""),
    ("a white square on a black background", ""),
    ("a green circle on an orange background", "green"),  # the negative prompt should fight the shape colour
]


def build_tokenizer(folder: Path):
    """The full CLIP BPE vocabulary as vocab.json + merges.txt, loaded as diffusers' slow
    CLIPTokenizer (pad `<|endoftext|>`, model_max_length 77)."""
    vocab, merges = clip_bpe(None)
    assert len(vocab) == 49408, len(vocab)
    write_bpe(folder, vocab, merges)
    return make_slow_tokenizer(folder, "<|endoftext|>")


def load_modules(weights: Path):
    """text encoder, UNet and VAE from a diffusers-format folder, as float32, in eval mode."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(weights / "text_encoder", torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(weights / "unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(weights / "vae", torch_dtype=torch.float32).eval()
    for m in (te, unet, vae):
        assert next(m.parameters()).dtype == torch.float32
    return te, unet, vae


def export(weights: Path, out: Path, work: Path | None = None) -> dict:
    """Export WEIGHTS (diffusers format) to OUT (optimum layout). Returns the config optimum
    wrote for the scheduler (before it is replaced by the original)."""
    weights, out = Path(weights).resolve(), Path(out).resolve()
    sched_file = weights / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(sched_file.read_text())
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="easel-tiny-shapes-export-")
        work = Path(tmp.name)
    try:
        tokenizer = build_tokenizer(work / "clip-bpe")
        te, unet, vae = load_modules(weights)
        pipe = assemble_pipeline(vae, te, tokenizer, unet, scheduler_from_config(sched_cfg))
        ddir = work / "diffusers"
        pipe.save_pretrained(ddir)
        shutil.copyfile(sched_file, ddir / "scheduler" / "scheduler_config.json")

        if out.exists():
            shutil.rmtree(out)
        t0 = time.time()
        optimum_export(ddir, out, MODEL_NAME)
        log(f"  optimum export took {time.time() - t0:.1f} s")

        exported_sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
        # Configs record the (temporary) folder they were loaded from; name the model instead.
        set_name_or_path(out, MODEL_NAME)
        # optimum re-saves the scheduler with every __init__ key filled in; ship the original.
        shutil.copyfile(sched_file, out / "scheduler" / "scheduler_config.json")
        for p in out.rglob("*"):
            if p.is_file() and p.suffix in (".json", ".txt"):
                assert str(work) not in p.read_text(encoding="utf-8"), f"temporary path left in {p}"
    finally:
        if tmp is not None:
            tmp.cleanup()
    return exported_sched


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def check(weights: Path, out: Path) -> dict:
    """Max abs difference of every ONNX sub-model against its PyTorch module on the same inputs."""
    import torch

    te, unet, vae = load_modules(Path(weights))
    rng = np.random.default_rng(1234)
    diffs = {}
    vocab = te.config.vocab_size
    with torch.no_grad():
        tok = make_slow_tokenizer_for(out)
        ids = tok(
            ["a red circle on a blue background", "purple square, white background"],
            padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="np",
        )["input_ids"].astype(np.int64)
        ids_rand = rng.integers(0, vocab, size=(2, MAX_LEN)).astype(np.int64)
        ids_rand[:, -1] = vocab - 1
        s = ort_session(out / "text_encoder" / "model.onnx")
        d = 0.0
        for x in (ids, ids_rand):
            ref = te(torch.from_numpy(x))
            o = dict(zip([y.name for y in s.get_outputs()], s.run(None, {"input_ids": x})))
            d = max(d, float(np.abs(o["last_hidden_state"] - ref.last_hidden_state.numpy()).max()),
                    float(np.abs(o["pooler_output"] - ref.pooler_output.numpy()).max()))
        diffs["text_encoder"] = d

        h = unet.config.sample_size
        sample = rng.standard_normal((2, 4, h, h), dtype=np.float32)
        ehs = te(torch.from_numpy(ids)).last_hidden_state.numpy()
        s = ort_session(out / "unet" / "model.onnx")
        d = 0.0
        for t in (1.0, 421.0, 981.0):
            ref = unet(torch.from_numpy(sample), torch.tensor(t), torch.from_numpy(ehs)).sample.numpy()
            o = s.run(None, {"sample": sample, "timestep": np.array(t, dtype=np.float32), "encoder_hidden_states": ehs})[0]
            d = max(d, float(np.abs(o - ref).max()))
        diffs["unet"] = d

        f = 2 ** (len(vae.config.block_out_channels) - 1)
        z = rng.standard_normal((1, 4, h, h), dtype=np.float32) / vae.config.scaling_factor
        ref = vae.decode(torch.from_numpy(z)).sample.numpy()
        s = ort_session(out / "vae_decoder" / "model.onnx")
        diffs["vae_decoder"] = float(np.abs(s.run(None, {"latent_sample": z})[0] - ref).max())

        x = rng.uniform(-1, 1, size=(1, 3, h * f, h * f)).astype(np.float32)
        ref = vae.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
        s = ort_session(out / "vae_encoder" / "model.onnx")
        diffs["vae_encoder"] = float(np.abs(s.run(None, {"sample": x})[0] - ref).max())
    log("  ONNX vs PyTorch max abs diff: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    for k, v in diffs.items():
        assert v < 1e-3, (k, v)
    return diffs


def make_slow_tokenizer_for(model_dir: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(model_dir / "tokenizer")


def signatures(out: Path) -> dict:
    sigs = {part: onnx_signature(out / part / "model.onnx") for part in PARTS}
    for part, s in sigs.items():
        log(f"  {part}: {describe_signature(s)}  opset {','.join(s['opset'])}")
    return sigs


def sizes(out: Path) -> dict:
    res = {}
    for p in sorted(out.iterdir()):
        if p.is_dir():
            res[p.name] = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file() and not p.name.startswith("."):
            res[p.name] = p.stat().st_size
    total = sum(res.values())
    log("  sizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in res.items()) + f"; total {total / 1e6:.2f} MB ({total / 2**20:.2f} MiB)")
    return {"parts": res, "total": total}


def tree_sha(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.relative_to(out).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def smoke(out: Path, dest: Path, prompts=SMOKE_PROMPTS, steps=20, guidance=7.5, seed0=0):
    """Draw a few captions with optimum's ORT pipeline (the model's own DDIM config) and save
    PNGs (plus a contact sheet) in DEST. Returns the seconds per picture."""
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    pipe = ORTStableDiffusionPipeline.from_pretrained(out, provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)
    log(f"  smoke: {type(pipe.scheduler).__name__}, {steps} steps, guidance {guidance}")
    imgs, secs = [], []
    for i, (prompt, neg) in enumerate(prompts):
        t0 = time.time()
        img = pipe(
            prompt, negative_prompt=neg or None, height=128, width=128, num_inference_steps=steps,
            guidance_scale=guidance, generator=torch.Generator().manual_seed(seed0 + i),
        ).images[0]
        secs.append(time.time() - t0)
        name = f"{i}-" + prompt.replace(" ", "_") + (f"--neg_{neg}" if neg else "") + ".png"
        img.save(dest / name)
        imgs.append(img)
        a = np.asarray(img).astype(int)
        border = np.concatenate([a[:4].reshape(-1, 3), a[-4:].reshape(-1, 3), a[:, :4].reshape(-1, 3), a[:, -4:].reshape(-1, 3)])
        centre = a[48:80, 48:80].reshape(-1, 3)
        log(f"    {name}: {secs[-1]:.2f} s; border RGB {np.median(border, 0).astype(int).tolist()}, centre RGB {np.median(centre, 0).astype(int).tolist()}")
    sheet = Image.new("RGB", (128 * len(imgs), 128))
    for i, im in enumerate(imgs):
        sheet.paste(im, (128 * i, 0))
    sheet.save(dest / "sheet.png")
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path, help="diffusers-format folder (text_encoder/, unet/, vae/, scheduler/)")
    ap.add_argument("out", type=Path, help="easel model folder to write (replaced if it exists)")
    ap.add_argument("--check", action="store_true", help="compare every ONNX sub-model with its PyTorch module")
    ap.add_argument("--smoke", type=Path, default=None, help="draw 4 captions with the ORT pipeline into this folder")
    ap.add_argument("--work", type=Path, default=None, help="keep the intermediate diffusers pipeline here (default: a temp dir)")
    args = ap.parse_args()

    import torch

    torch.manual_seed(0)
    log(f"== export {args.weights} -> {args.out}")
    exported = export(args.weights, args.out, args.work)
    dropped = {k: v for k, v in exported.items() if k not in json.loads((args.out / "scheduler" / "scheduler_config.json").read_text())}
    if dropped:
        log(f"  keys optimum added to the scheduler config (dropped again): {dropped}")
    sizes(args.out)
    signatures(args.out)
    log(f"  tree sha256 {tree_sha(args.out)}")
    if args.check:
        check(args.weights, args.out)
    if args.smoke is not None:
        smoke(args.out, args.smoke)


if __name__ == "__main__":
    main()
