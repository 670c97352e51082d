#!/usr/bin/env python3
"""An fp16 twin of sd1-tiny, and fp16-vs-fp32 measurements, under tests/fixtures/fp16/.

Run from the repository root (needs tests/fixtures/ from make_fixtures.py):

    .venv-tools/bin/python tools/make_fp16_fixture.py      # ~30 s on 2 CPUs

What it does:

  1. rebuilds sd1-tiny's diffusers pipeline with common.py's builder (the one make_fixtures.py
     uses; seed 1) and checks it against the committed tests/fixtures/models/sd1-tiny ONNX;
  2. exports it with `optimum-cli export onnx --task text-to-image --dtype fp16` (the PyTorch
     modules are loaded in float16 and traced on the CPU; no GPU needed with torch 2.15).
     `python -m optimum.exporters.onnx ... --dtype fp16` would NOT do it: that entry point
     parses --dtype but never passes it on, and writes float32. optimum's own validation
     (ORT fp16 vs PyTorch fp16 on the CPU) fails at its default tolerances (1e-5 / 3e-4; the
     fp16 outputs differ by up to ~0.03), so it runs with --atol 0.1; the real checks follow;
  3. writes models/sd1-tiny-fp16/ (optimum's layout; configs' `_name_or_path` made
     reproducible and SD 1.5's scheduler file restored, as make_fixtures does) and checks:
     every float initializer is exactly sd1-tiny's float32 value rounded to float16, every
     float input/output is float16 (input_ids stays int64), ORT 1.31.1 CPU loads and runs
     each sub-model (vs ORT float32 and PyTorch float32);
  4. runs 4 text-to-image cases with the fp16 and the fp32 model from the same initial
     noise, and writes the PyTorch StableDiffusionPipeline (float32) image of each case, the
     noise and manifest.json with the measured differences.

See the README text in tools/README.md ("make_fp16_fixture.py").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from common import (  # also sets HF_HUB_OFFLINE etc.
    FIX, MAX_LEN, NEGATIVE, SD15_SCHEDULER, describe_signature, finish, fixture_args, fresh_dir,
    load_ort_pipeline, load_pipeline, log, make_scheduler, onnx_signature, ort_session, rebuild_and_verify,
    reference_entry, run_checked, run_pipe, save_png, scratch_dir, set_name_or_path, to_pil, torch_setup,
    write_json,
)

OUT = FIX / "fp16"
SD1 = FIX / "models" / "sd1-tiny"
NAME = "sd1-tiny-fp16"
PARTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
OPTIMUM_ATOL = "0.1"


# --------------------------------------------------------------------------------------
# export + checks
# --------------------------------------------------------------------------------------


def export_fp16(ddir: Path, out: Path):
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(ddir),
           "--task", "text-to-image", "--dtype", "fp16", "--atol", OPTIMUM_ATOL, str(out)]
    log("  $ optimum-cli " + " ".join(cmd[3:]))
    run_checked(cmd, "optimum fp16 export")
    exported_sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    set_name_or_path(out, f"easel-fixtures/{NAME}")
    write_json(out / "scheduler" / "scheduler_config.json", SD15_SCHEDULER)
    return exported_sched


def compare_side_files(out: Path):
    """Every non-ONNX file vs sd1-tiny's: identical, or the JSON keys that differ."""
    res = {}
    for p in sorted(SD1.rglob("*")):
        if not p.is_file() or p.suffix == ".onnx":
            continue
        rel = p.relative_to(SD1).as_posix()
        q = out / rel
        assert q.exists(), f"{rel} missing from the fp16 export"
        if q.read_bytes() == p.read_bytes():
            continue
        a, b = json.loads(p.read_text()), json.loads(q.read_text())
        res[rel] = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    extra = sorted(q.relative_to(out).as_posix() for q in out.rglob("*") if q.is_file() and not (SD1 / q.relative_to(out)).exists())
    assert not extra, f"files the fp16 export has and sd1-tiny has not: {extra}"
    return res


def check_weights(part: str, out: Path):
    """Every initializer of the fp16 graph == sd1-tiny's float32 initializer at the same
    position, rounded to float16 (the same weights); non-float initializers equal. Named
    parameters keep their names; the anonymous ones the exporter folds (onnx::MatMul_1631 ...)
    are numbered differently in the two exports, so they are matched by position."""
    import onnx
    from onnx import numpy_helper

    g16 = onnx.load(str(out / part / "model.onnx")).graph.initializer
    g32 = onnx.load(str(SD1 / part / "model.onnx")).graph.initializer
    assert len(g16) == len(g32), (part, len(g16), len(g32))
    n_float = 0
    for x, y in zip(g16, g32):
        assert x.name == y.name or (x.name.startswith("onnx::") and y.name.startswith("onnx::")), (part, x.name, y.name)
        a, b = numpy_helper.to_array(x), numpy_helper.to_array(y)
        assert a.shape == b.shape, (part, x.name, a.shape, b.shape)
        if b.dtype == np.float32:
            assert a.dtype == np.float16, (part, x.name, a.dtype)
            assert np.array_equal(a.view(np.uint16), b.astype(np.float16).view(np.uint16)), (part, x.name)
            n_float += 1
        else:
            assert a.dtype == b.dtype and np.array_equal(a, b), (part, x.name)
    return n_float, len(g16)


def check_signature(part: str, out: Path):
    s16 = onnx_signature(out / part / "model.onnx")
    s32 = onnx_signature(SD1 / part / "model.onnx")
    for kind in ("inputs", "outputs"):
        assert [(x["name"], x["shape"]) for x in s16[kind]] == [(x["name"], x["shape"]) for x in s32[kind]], (part, kind)
        for a, b in zip(s16[kind], s32[kind]):
            assert a["dtype"] == ("float16" if b["dtype"] == "float" else b["dtype"]), (part, a, b)
    return s16


def graph_casts(part: str, out: Path):
    """Casts in the exported fp16 graph, by target type (PyTorch's fp16 trace keeps a few
    float32 islands: the timestep embedding, the attention scale)."""
    import collections

    import onnx

    m = onnx.load(str(out / part / "model.onnx"))
    c = collections.Counter()
    for n in m.graph.node:
        if n.op_type == "Cast":
            c[onnx.TensorProto.DataType.Name(n.attribute[0].i).lower()] += 1
    return dict(sorted(c.items()))


def ort_kernel_dtypes(path: Path, feeds: dict, tmp: Path):
    """Which compute kernels ORT's CPU EP really ran in float16 / float32 (profiling), and how
    many Cast nodes its graph optimizer inserted (InsertedPrecisionFreeCast_*)."""
    import collections

    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "ortprof")
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    s.run(None, feeds)
    prof = json.loads(Path(s.end_profiling()).read_text())
    inserted = sum(1 for n in onnx.load(str(tmp / "optimized.onnx")).graph.node if n.op_type == "Cast" and n.name.startswith("Inserted"))
    movement = {"Cast", "Shape", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather", "Slice", "Concat", "Expand",
                "Flatten", "Where", "Split", "ReorderInput", "ReorderOutput", "Identity", "ConstantOfShape"}
    per = {"float16": collections.Counter(), "float": collections.Counter()}
    for e in prof:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        a = e["args"]
        if a["op_name"] in movement:
            continue
        types = {next(iter(d)) for d in a.get("input_type_shape", [])}
        for t in ("float16", "float"):
            if t in types:
                per[t][a["op_name"]] += 1
                break
    return inserted, {t: dict(sorted(c.items())) for t, c in per.items()}


def run_submodels(ddir: Path, out: Path, tmp: Path):
    """ORT fp16 vs ORT fp32 vs PyTorch fp32 on random inputs (common.verify_model's
    inputs and seed), and the time of one run of each session."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(ddir / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(ddir / "unet").eval()
    vae = AutoencoderKL.from_pretrained(ddir / "vae").eval()
    rng = np.random.default_rng(1234)
    vocab = te.config.vocab_size
    ids = rng.integers(0, vocab, size=(2, MAX_LEN)).astype(np.int64)
    ids[:, -1] = vocab - 1
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    ehs = rng.standard_normal((2, MAX_LEN, 32), dtype=np.float32)
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    x = rng.uniform(-1, 1, size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        r = te(torch.from_numpy(ids))
        refs = {
            "text_encoder": [r.last_hidden_state.numpy(), r.pooler_output.numpy()],
            "unet": [unet(torch.from_numpy(sample), torch.tensor(421.0), torch.from_numpy(ehs)).sample.numpy()],
            "vae_decoder": [vae.decode(torch.from_numpy(z)).sample.numpy()],
            "vae_encoder": [vae.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()],
        }
    feeds = {
        "text_encoder": {"input_ids": ids},
        "unet": {"sample": sample, "timestep": np.array(421.0, dtype=np.float32), "encoder_hidden_states": ehs},
        "vae_decoder": {"latent_sample": z},
        "vae_encoder": {"sample": x},
    }
    res = {}
    for part in PARTS:
        s16 = ort_session(out / part / "model.onnx")
        s32 = ort_session(SD1 / part / "model.onnx")
        f32 = feeds[part]
        f16 = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in f32.items()}
        o16 = s16.run(None, f16)
        o32 = s32.run(None, f32)
        assert all(o.dtype == np.float16 for o in o16), part
        d_ort = max(float(np.abs(a.astype(np.float32) - b).max()) for a, b in zip(o16, o32))
        d_pt = max(float(np.abs(a.astype(np.float32) - b).max()) for a, b in zip(o16, refs[part]))
        d32 = max(float(np.abs(a - b).max()) for a, b in zip(o32, refs[part]))
        scale = max(float(np.abs(b).max()) for b in refs[part])
        assert d_pt < 2e-2 * max(1.0, scale), (part, d_pt)

        def timed(s, f, n=30):
            s.run(None, f)
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                s.run(None, f)
                ts.append(time.perf_counter() - t)
            return float(np.median(ts)) * 1000

        inserted, kernels = ort_kernel_dtypes(out / part / "model.onnx", f16, tmp)
        res[part] = dict(fp16_vs_fp32_ort=d_ort, fp16_vs_pytorch=d_pt, fp32_ort_vs_pytorch=d32, output_max_abs=scale,
                         ms_fp16=timed(s16, f16), ms_fp32=timed(s32, f32), ort_inserted_casts=inserted, kernels=kernels)
    return res


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------


def build_cases():
    neg = NEGATIVE
    astro = "a photograph of an astronaut riding a horse"
    return [
        dict(name="fp16-euler-cfg", prompt=astro, negative_prompt=neg, width=64, height=64, steps=10, guidance_scale=7.5, sampler="euler"),
        dict(name="fp16-ddim-nocfg", prompt="a red cube on a table", negative_prompt="", width=64, height=64, steps=10, guidance_scale=1.0, sampler="ddim"),
        dict(name="fp16-dpmpp_2m-cfg", prompt=astro, negative_prompt=neg, width=64, height=64, steps=10, guidance_scale=7.5, sampler="dpmpp_2m"),
        dict(name="fp16-euler-cfg-80x48", prompt="a wide landscape, mountains and a lake", negative_prompt=neg, width=80, height=48, steps=10,
             guidance_scale=7.5, sampler="euler"),
    ]


class HostLoop:
    """What easel does: ORT sessions for the networks, the scheduler (diffusers' own class,
    from the model's file) and classifier-free guidance in float32 on the host; tensors are
    cast to the session's float type at each call and back to float32 after it."""

    def __init__(self, mdir: Path, tokenizer):
        self.s = {p: ort_session(mdir / p / "model.onnx") for p in ("text_encoder", "unet", "vae_decoder")}
        self.dt = {p: {i.name: i.type for i in s.get_inputs()} for p, s in self.s.items()}
        self.tok = tokenizer
        self.scaling = json.loads((mdir / "vae_decoder" / "config.json").read_text())["scaling_factor"]
        self.sched_file = mdir / "scheduler" / "scheduler_config.json"

    def _run(self, part, feeds):
        conv = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
        f = {k: np.asarray(v).astype(conv[self.dt[part][k]]) for k, v in feeds.items()}
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in self.s[part].run(None, f)]

    def encode(self, text):
        ids = self.tok(text, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="np").input_ids.astype(np.int64)
        return self._run("text_encoder", {"input_ids": ids})[0]

    def __call__(self, case, noise):
        import torch

        sched = make_scheduler(case["sampler"], self.sched_file)
        cfg = case["guidance_scale"] > 1
        emb = self.encode(case["prompt"])
        if cfg:
            emb = np.concatenate([self.encode(case["negative_prompt"] or ""), emb])
        sched.set_timesteps(case["steps"])
        latents = torch.from_numpy(noise.copy()) * sched.init_noise_sigma
        for t in sched.timesteps:
            x = torch.cat([latents] * 2) if cfg else latents
            x = sched.scale_model_input(x, t)
            eps = torch.from_numpy(self._run("unet", {"sample": x.numpy(), "timestep": np.array(float(t)), "encoder_hidden_states": emb})[0])
            if cfg:
                u, c = eps.chunk(2)
                eps = u + case["guidance_scale"] * (c - u)
            latents = sched.step(eps, t, latents, return_dict=False)[0]
        img = self._run("vae_decoder", {"latent_sample": (latents / self.scaling).numpy()})[0]
        return np.clip(img / 2 + 0.5, 0, 1)[0].transpose(1, 2, 0).astype(np.float32)


def diff(a, b):
    """u8 = PNG pixels (numpy_to_pil of each float image); f = float images x 255."""
    pa = np.asarray(to_pil(a)).astype(np.float32)
    pb = np.asarray(to_pil(b)).astype(np.float32)
    d8 = np.abs(pa - pb)
    df = np.abs(a.astype(np.float64) - b.astype(np.float64)) * 255.0
    return dict(mean_u8=round(float(d8.mean()), 4), max_u8=int(d8.max()), mean_f255=round(float(df.mean()), 4), max_f255=round(float(df.max()), 4))


def diff_png(a, png: np.ndarray):
    d8 = np.abs(np.asarray(to_pil(a)).astype(np.float32) - png.astype(np.float32))
    return dict(mean_u8=round(float(d8.mean()), 4), max_u8=int(d8.max()))


def main():
    fixture_args(__doc__).parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    torch_setup()
    fresh_dir(OUT, ("models", "noise", "images"))
    work = scratch_dir("easel-fp16-")

    # 1. sd1-tiny rebuilt from make_fixtures' seed, checked against the committed ONNX
    sd1, ddir, _ = rebuild_and_verify("sd1-tiny", work)

    # 2./3. fp16 export + checks
    log(f"== model {NAME} (optimum fp16 export)")
    mdir = OUT / "models" / NAME
    exported_sched = export_fp16(ddir, mdir)
    log("  optimum re-saved scheduler (overwritten): " + json.dumps(exported_sched, sort_keys=True))
    side = compare_side_files(mdir)
    log("  non-ONNX files that differ from sd1-tiny's: " + (json.dumps(side, sort_keys=True) if side else "none"))
    sigs = {}
    for part in PARTS:
        sigs[part] = check_signature(part, mdir)
        n_float, n_all = check_weights(part, mdir)
        casts = graph_casts(part, mdir)
        log(f"  {part}: {describe_signature(sigs[part])}; {n_float}/{n_all} initializers float16 == float32 weights rounded; Casts in graph {casts}")
    sub = run_submodels(ddir, mdir, work)
    for part, r in sub.items():
        log(f"  {part}: ORT fp16 vs ORT fp32 {r['fp16_vs_fp32_ort']:.2e}, vs PyTorch fp32 {r['fp16_vs_pytorch']:.2e} "
            f"(fp32 ORT vs PyTorch {r['fp32_ort_vs_pytorch']:.1e}; outputs up to {r['output_max_abs']:.2f}); "
            f"{r['ms_fp16']:.2f} ms fp16 vs {r['ms_fp32']:.2f} ms fp32 per run; ORT inserted {r['ort_inserted_casts']} Casts")
        log(f"      compute kernels run in float16: {r['kernels']['float16']}")
        log(f"      compute kernels run in float32: {r['kernels']['float']}")

    # 4. cases
    log("== cases")
    sched_file = SD1 / "scheduler" / "scheduler_config.json"
    pt = load_pipeline(StableDiffusionPipeline, ddir)
    # the same weights computed in float16 by PyTorch on the CPU (latents float16 throughout,
    # as diffusers does with torch_dtype=float16): what genuine fp16 arithmetic does, e.g. on a GPU
    pt16 = load_pipeline(StableDiffusionPipeline, ddir, torch_dtype=torch.float16)
    loops = {"fp16": HostLoop(mdir, sd1.tokenizer), "fp32": HostLoop(SD1, sd1.tokenizer)}
    ortp = {k: load_ort_pipeline("ORTStableDiffusionPipeline", d) for k, d in (("fp16", mdir), ("fp32", SD1))}
    manifest, timing = [], []
    for idx, case in enumerate(build_cases()):
        shape = (1, 4, case["height"] // 8, case["width"] // 8)
        noise = np.random.default_rng(7000 + idx).standard_normal(shape, dtype=np.float32)
        noise_path = f"fp16/noise/{case['name']}.npy"
        np.save(FIX / noise_path, noise)
        img, _ = run_pipe(pt, case, noise, sched_file, {})
        pil = to_pil(img)
        img_path = f"fp16/images/{case['name']}.png"
        save_png(FIX / img_path, pil)
        png = np.asarray(pil)

        res, secs = {}, {}
        for k in ("fp16", "fp32"):
            t = time.perf_counter()
            res[k] = loops[k](case, noise)
            secs[k] = time.perf_counter() - t
        for k in ("fp16", "fp32"):
            t = time.perf_counter()
            res[f"ortpipe_{k}"], _ = run_pipe(ortp[k], case, noise, sched_file, {})
            secs[f"ortpipe_{k}"] = time.perf_counter() - t
        res["pytorch_fp16"], _ = run_pipe(pt16, case, noise.astype(np.float16), sched_file, {})
        res["pytorch_fp16"] = res["pytorch_fp16"].astype(np.float32)
        d = dict(
            fp16_vs_fp32=diff(res["fp16"], res["fp32"]),
            fp16_vs_image=diff_png(res["fp16"], png),
            fp32_vs_image=diff_png(res["fp32"], png),
            ort_pipeline_fp16_vs_fp32=diff(res["ortpipe_fp16"], res["ortpipe_fp32"]),
            ort_pipeline_fp16_vs_image=diff_png(res["ortpipe_fp16"], png),
            pytorch_fp16_vs_fp32=diff(res["pytorch_fp16"], img),
        )
        assert d["fp32_vs_image"]["max_u8"] <= 1, d  # the host loop is the pipeline (ORT fp32 vs PyTorch: within 1/255)
        entry = reference_entry(
            case, f"fp16/models/{NAME}", noise_path, None, img_path,
            after_model=dict(fp32_model="models/sd1-tiny"),
            before_notes=dict(diff=d),
            notes=(
                "image: diffusers' PyTorch StableDiffusionPipeline with sd1-tiny's float32 weights (as references/). "
                "diff: fp16_vs_fp32 = the same host loop (ORT CPU sessions, diffusers scheduler and CFG in float32, "
                "tensors cast to float16 at each session call) with the fp16 model vs the fp32 model; fp16_vs_image / "
                "fp32_vs_image = that loop's PNG vs image; ort_pipeline_* = optimum's ORTStableDiffusionPipeline "
                "(its latents become float16 after the first scheduler step); pytorch_fp16_vs_fp32 = diffusers' PyTorch pipeline "
                "with torch_dtype=float16 on the CPU (genuine float16 arithmetic, latents float16, noise rounded to float16) vs "
                "image. u8 = PNG pixels, f255 = float image x 255."
            ),
        )
        manifest.append(entry)
        timing.append(secs)
        log(f"  {case['name']:<22} fp16-vs-fp32 u8 mean {d['fp16_vs_fp32']['mean_u8']:.4f} max {d['fp16_vs_fp32']['max_u8']}"
            f"  f255 mean {d['fp16_vs_fp32']['mean_f255']:.4f} max {d['fp16_vs_fp32']['max_f255']:.4f}"
            f" | fp16-vs-PNG max {d['fp16_vs_image']['max_u8']} | ORT pipeline fp16-vs-fp32 u8 max {d['ort_pipeline_fp16_vs_fp32']['max_u8']}"
            f" f255 max {d['ort_pipeline_fp16_vs_fp32']['max_f255']:.4f}"
            f" | PyTorch fp16 u8 max {d['pytorch_fp16_vs_fp32']['max_u8']}"
            f" | {secs['fp16']:.2f} s fp16 vs {secs['fp32']:.2f} s fp32")

    log("== fp16 vs fp32 (markdown)")
    log("| case | sampler | size | u8 mean | u8 max | float×255 mean | float×255 max | fp16 vs PNG u8 max | ORT pipeline u8 max / float×255 max | PyTorch fp16 u8 max / float×255 max |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    for e in manifest:
        d = e["diff"]
        log(f"| {e['name']} | {e['sampler']} | {e['width']}×{e['height']} | {d['fp16_vs_fp32']['mean_u8']:.4f} | {d['fp16_vs_fp32']['max_u8']} | "
            f"{d['fp16_vs_fp32']['mean_f255']:.4f} | {d['fp16_vs_fp32']['max_f255']:.4f} | {d['fp16_vs_image']['max_u8']} | "
            f"{d['ort_pipeline_fp16_vs_fp32']['max_u8']} / {d['ort_pipeline_fp16_vs_fp32']['max_f255']:.4f} | "
            f"{d['pytorch_fp16_vs_fp32']['max_u8']} / {d['pytorch_fp16_vs_fp32']['max_f255']:.4f} |")
    tot = {k: sum(t[k] for t in timing) for k in timing[0]}
    log("== time for the 4 cases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in tot.items()))
    finish(OUT, manifest)


if __name__ == "__main__":
    main()
