"""What the fixture scripts in tools/ share.

Every script that makes a committed fixture (make_*_fixture(s).py, prompt_reference.py,
sampler_references.py) and tools/tiny_shapes/{export,train}.py import this module. It holds
what two or more of them must do the same way, so that a change (a diffusers upgrade, a new
sampler, another noise draw) is made once:

  - the offline environment (set on import: import this before diffusers / transformers);
  - paths (the repository, tests/fixtures/, tools/configs/), small output helpers (log,
    JSON, PNG, sha256, sizes), fresh output and scratch folders, the --skip-ort option;
  - the CLIP BPE tokenizer construction;
  - the tiny models: their specs and seeds, the builder, the "rebuild sd1-tiny / sd2-tiny-v
    and check it against the committed ONNX" step, optimum export and its clean-up;
  - schedulers: the sampler table, building a scheduler from the file on disk the way a
    pipeline does, and what add_noise / strength do;
  - the noise tape (diffusers' `randn_tensor` swapped for recorded numpy noise);
  - loading and running pipelines, the ORT-pipeline-vs-PyTorch comparison, the manifest's
    common fields and a script's closing lines.

What stays in a script: its own cases, models, checks and manifest fields. Scheduler
configs that are copies of real models' files live in tools/configs/ (the Rust tests read
them too). Heavy packages (torch, diffusers, onnx, optimum) are imported inside the functions
that need them, so scripts that do not need them (make_dtype_fixture.py,
prompt_reference.py) stay light.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Nothing is downloaded: every model is built here from seeds, and a look-up on the Hub must
# fail at once instead of hanging. These are read when huggingface_hub / transformers are
# imported, so they are set before anything imports them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# onnxruntime's official builds write a device id under ~/.cache/Microsoft and send telemetry
# when loaded unless this is set (easeld sets it for itself too).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import numpy as np  # noqa: E402

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
FIX = ROOT / "tests" / "fixtures"
CONFIGS = TOOLS / "configs"
TINY_TOKENIZER = FIX / "tokenizer" / "clip-tiny"

MAX_LEN = 77  # CLIP's context length
NEGATIVE = "blurry, low quality"  # the negative prompt of the guided reference cases


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def log(*a):
    print(*a, flush=True)


def write_json(path: Path, obj, indent=2):
    """The format of every JSON fixture and config: indented, UTF-8, trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def load_config(name: str) -> dict:
    """tools/configs/NAME.json as a dict, keys in file order (scheduler files are written back
    from it, byte for byte)."""
    return json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))


def save_png(path: Path, image, mode: str | None = None):
    """A PIL image, or a uint8 array in `mode` ("RGB", "L"), as an unoptimized PNG."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def disk_and_new_bytes(folder: Path, known: Path | None = None) -> tuple[int, int]:
    """(bytes of every file under folder, bytes of distinct content not already under
    `known`): git stores identical blobs once, so the second is what a commit adds."""
    seen = {sha(p) for p in known.rglob("*") if p.is_file()} if known is not None else set()
    total, new = 0, {}
    for p in folder.rglob("*"):
        if p.is_file():
            total += p.stat().st_size
            h = sha(p)
            if h not in seen:
                new[h] = p.stat().st_size
    return total, sum(new.values())


def fresh_dir(folder: Path, subs=()):
    """Delete folder and recreate it with the given sub-folders: each script rewrites its
    fixtures from scratch, so nothing stale survives a change of cases."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for sub in subs:
        (folder / sub).mkdir(parents=True)


_SCRATCH = []  # the scratch_dir() folders, alive until the script exits


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for a run's diffusers checkpoints and exports. TemporaryDirectory's
    finalizer removes it when the script exits, also when a check fails half-way."""
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    _SCRATCH.append(tmp)
    return Path(tmp.name)


def describe_signature(sig: dict) -> str:
    """onnx_signature() as `(name:dtype[shape], ...) -> (...)`."""
    ins = ", ".join(f"{i['name']}:{i['dtype']}{i['shape']}" for i in sig["inputs"])
    outs = ", ".join(f"{o['name']}:{o['dtype']}{o['shape']}" for o in sig["outputs"])
    return f"({ins}) -> ({outs})"


# --------------------------------------------------------------------------------------
# CLIP BPE tokenizer
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


# --------------------------------------------------------------------------------------
# The tiny models (tests/fixtures/models/), rebuilt from their seeds by every script
# --------------------------------------------------------------------------------------

# Scheduler configs exactly as the real models ship them (keys absent take class defaults,
# exactly as diffusers' from_config does for a file read from disk).
# runwayml/stable-diffusion-v1-5: one file, tools/configs/sd15-scheduler.json, shared with
# sampler_references.py and the Rust sampler tests.
SD15_SCHEDULER = load_config("sd15-scheduler")
# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json (DDIM + v_prediction; it
# carries a stray "skip_prk_steps" and no "timestep_spacing", so DDIM uses "leading" and
# Euler/DPM/Heun fall back to their own default "linspace"): tools/configs/sd21-scheduler.json,
# shared with sd2-tiny-v and the daemon's flat-bundle import (its SD 2.x default).
SD21_SCHEDULER = load_config("sd21-scheduler")

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


def scheduler_from_config(cfg: dict):
    """The config's own scheduler class (model_index.json names it; optimum re-saves it by it)."""
    import diffusers

    return getattr(diffusers, cfg["_class_name"]).from_config(dict(cfg))


def tiny_unet(sample_size: int, use_linear_projection: bool, in_channels: int = 4, **extra):
    """The tiny models' UNet2DConditionModel (random weights from torch's current seed: the
    caller seeds). `extra`: further or overriding constructor arguments, e.g. time_cond_proj_dim
    for the LCM UNet, SDXL's cross_attention_dim and addition embedding; the other UNets are
    constructed exactly as before."""
    import torch
    from diffusers import UNet2DConditionModel

    config = dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=use_linear_projection,
    )
    unet = UNet2DConditionModel(**{**config, **extra}).eval()
    # Random init predicts noise with std ~0.33; a trained UNet predicts ~unit variance.
    # Scale the output conv so the UNet moves the latents like a real one (and the reference
    # images depend strongly on every step being right). Still a plain UNet2DConditionModel.
    with torch.no_grad():
        unet.conv_out.weight.mul_(3.0)
        unet.conv_out.bias.mul_(3.0)
    return unet


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler, cls=None):
    """A diffusers pipeline (StableDiffusionPipeline unless `cls`) without safety checker."""
    if cls is None:
        from diffusers import StableDiffusionPipeline as cls
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(name: str, spec: dict, tok_dir: Path):
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_slow_tokenizer(tok_dir, spec["pad"])
    vocab = len(tokenizer.get_vocab())
    # one seed for all three networks, drawn in this order: text encoder, UNet, VAE
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
    unet = tiny_unet(spec["unet_sample"], spec["use_linear_projection"])
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
    return assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler_from_config(spec["scheduler"]))


def save_diffusers(pipe, ddir: Path, scheduler: dict):
    """save_pretrained, then the scheduler file as the real model ships it (save_pretrained
    writes every class default, which would change what from_config does with the file)."""
    pipe.save_pretrained(ddir)
    write_json(ddir / "scheduler" / "scheduler_config.json", scheduler)


def rebuild_and_verify(name: str, work: Path):
    """Rebuild a committed tiny model (sd1-tiny, sd2-tiny-v) from its seed, save it under
    work/diffusers/NAME and check it computes what the committed ONNX files compute, so a
    script's PyTorch references are references for those files. Returns (pipe, ddir, diffs)."""
    spec = MODEL_SPECS[name]
    log(f"== rebuild {name} (seed {spec['seed']})")
    pipe = build_pipeline(name, spec, TINY_TOKENIZER)
    ddir = work / "diffusers" / name
    save_diffusers(pipe, ddir, spec["scheduler"])
    d = verify_model(name, ddir, FIX / "models" / name)
    assert max(d.values()) < 1e-4, f"rebuilt {name} does not match the committed ONNX: {d}"
    return pipe, ddir, d


# --------------------------------------------------------------------------------------
# ONNX: export, sessions, signatures, checks
# --------------------------------------------------------------------------------------


def run_checked(cmd: list, what: str):
    """Run a command; on failure print the tail of its output and stop."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stdout[-5000:], r.stderr[-5000:])
        raise SystemExit(f"{what} failed")


def optimum_export(ddir: Path, out: Path, what: str, task: str = "text-to-image"):
    """`python -m optimum.exporters.onnx --model DDIR --task TASK OUT` (float32)."""
    cmd = [sys.executable, "-m", "optimum.exporters.onnx", "--model", str(ddir), "--task", task, str(out)]
    log("  $ python " + " ".join(cmd[1:]))
    run_checked(cmd, f"optimum export of {what}")


def set_name_or_path(folder: Path, name: str):
    """Configs record the (temporary) folder they were loaded from; write a fixed name
    instead (NAME, NAME/text_encoder, ...) so two exports are byte-identical."""
    for p in sorted(folder.rglob("*.json")):
        d = json.loads(p.read_text())
        if isinstance(d, dict) and "_name_or_path" in d:
            sub = p.parent.relative_to(folder).as_posix()
            d["_name_or_path"] = name + ("" if sub == "." else f"/{sub}")
            write_json(p, d)


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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


# --------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------

# easel sampler name -> (diffusers class, from_config overrides)
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
# the scheduler module (where `randn_tensor` was imported) per sampler
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
# the samplers whose `step` draws noise (Euler a; LCM between steps)
STOCHASTIC = {s: SCHED_MODULE[s] for s in ("euler_a", "lcm")}
VAE_MODULE = "diffusers.models.autoencoders.vae"  # DiagonalGaussianDistribution.sample

# how add_noise mixes the clean latent x0 and the noise n
SIGMA_FAMILY = {"euler", "euler_a", "heun"}  # x0 + sigma[begin_index] * n
DPM_FAMILY = {"dpmpp_2m", "dpmpp_2m_karras"}  # alpha_t x0 + sigma_t n from sigma[begin_index]
ALPHA_FAMILY = {"ddim", "pndm", "lcm"}  # sqrt(acp[t]) x0 + sqrt(1 - acp[t]) n, t = latent_timestep


def make_scheduler(sampler: str, sched_file: Path):
    import diffusers

    cls_name, extra = SAMPLERS[sampler]
    cfg = json.load(open(sched_file))  # from the file on disk: no _use_default_values
    return getattr(diffusers, cls_name).from_config(cfg, **extra)


def expected_step_draws(sampler: str, n_run: int) -> int:
    if sampler == "euler_a":
        return n_run  # one per step, the last included
    if sampler == "lcm":
        return max(n_run - 1, 0)  # none after the scheduler's last step
    return 0  # euler/heun (s_churn 0), ddim/dpm (eta 0 / deterministic), pndm


def add_noise_facts(sampler: str, sched, begin_index, latent_timestep):
    """The coefficients add_noise used: noisy = a * x0 + b * noise."""
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


def record_get_timesteps(pipe, rec: dict):
    """Wrap an img2img / inpaint pipeline's get_timesteps (undo with `del pipe.get_timesteps`)
    to record the full schedule, the part that runs and the scheduler's begin_index."""
    orig = pipe.get_timesteps

    def get_timesteps(num_inference_steps, strength, device, **rest):  # SDXL's adds denoising_start
        rec["full_timesteps"] = [float(t) for t in pipe.scheduler.timesteps]
        ts, n = orig(num_inference_steps, strength, device, **rest)
        rec["timesteps"] = [float(t) for t in ts]
        rec["n_run"] = n
        rec["begin_index"] = getattr(pipe.scheduler, "begin_index", None)
        return ts, n

    pipe.get_timesteps = get_timesteps


def check_strength_schedule(sched, steps: int, strength: float, rec: dict):
    """Assert diffusers' strength arithmetic on a recorded run (record_get_timesteps);
    returns (init_timestep, t_start, order)."""
    order = sched.order
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    assert rec["timesteps"] == rec["full_timesteps"][t_start * order :]
    has_begin = hasattr(sched, "set_begin_index")
    assert rec["begin_index"] == (t_start * order if has_begin else None), (rec["begin_index"], t_start, order)
    return init_timestep, t_start, order


# --------------------------------------------------------------------------------------
# The noise tape
# --------------------------------------------------------------------------------------


class NoiseTape:
    """Replaces `randn_tensor` in several modules at once: {label: module name}. Every draw
    is served from float32 N(0,1) numpy noise (fresh from `rng`, or replayed from `replay`,
    a sequence of arrays of the drawn shapes) and recorded in order in `drawn`, with the label
    of the module that asked for it in `labels`. A fixture records the draws of a PyTorch run
    and replays them into the ORT pipeline (and easel replays them in its tests)."""

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
# Pipelines
# --------------------------------------------------------------------------------------


def fixture_args(doc: str, skip_ort: bool = False) -> argparse.ArgumentParser:
    """The scripts' argument parser: the module docstring as help, and --skip-ort for those
    that compare optimum's ORT pipeline with PyTorch."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if skip_ort:
        ap.add_argument("--skip-ort", action="store_true", help="skip the ORT-pipeline-vs-PyTorch comparison")
    return ap


def torch_setup():
    """Deterministic kernels, every core: two runs give byte-identical fixtures."""
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))


def load_pipeline(cls, folder: Path, **kw):
    """A diffusers pipeline class from a saved folder, without safety checker, quiet."""
    p = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False, **kw)
    p.set_progress_bar_config(disable=True)
    return p


def load_ort_pipeline(cls_name: str, folder: Path):
    """An optimum.onnxruntime pipeline (e.g. "ORTStableDiffusionPipeline") on the CPU, quiet."""
    import optimum.onnxruntime

    p = getattr(optimum.onnxruntime, cls_name).from_pretrained(folder, provider="CPUExecutionProvider")
    p.set_progress_bar_config(disable=True)
    return p


def cached_pipelines(pt_cls, pt_dir, ort_cls: str, ort_dir):
    """(pt_pipe, ort_pipe): model name -> the diffusers pipeline `pt_cls` loaded from
    pt_dir(model), and the optimum pipeline `ort_cls` (a class name) from ort_dir(model). Each
    folder is loaded once: cases of one model (and models with one PyTorch folder) share it."""
    pt = functools.cache(lambda folder: load_pipeline(pt_cls, folder))
    ort = functools.cache(lambda folder: load_ort_pipeline(ort_cls, folder))
    return (lambda model: pt(pt_dir(model))), (lambda model: ort(ort_dir(model)))


def run_pipe(pipe, case, noise, sched_file, tape_kwargs):
    """One text-to-image case with explicit initial noise, the scheduler from the model's file,
    and a NoiseTape (made with `tape_kwargs`: rng= or replay=) for the samplers that draw.
    Returns (image float [H, W, 3], tape or None)."""
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
        tape = NoiseTape({"step": STOCHASTIC[case["sampler"]]}, **tape_kwargs)
        with tape, torch.no_grad():
            img = pipe(**kw).images[0]
    else:
        with torch.no_grad():
            img = pipe(**kw).images[0]
    return img, tape


def to_pil(img):
    """diffusers' own float -> PIL conversion (what output_type="pil" does)."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pil(img[None])[0]


def reference_entry(case, model: str, init_noise, step_noise, image, notes, after_model=None, before_notes=None):
    """A text-to-image manifest entry with references/manifest.json's fields, in its order;
    `after_model` / `before_notes`: a script's own fields, placed there."""
    return dict(
        name=case["name"],
        model=model,
        **(after_model or {}),
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        width=case["width"],
        height=case["height"],
        steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        sampler=case["sampler"],
        init_noise=init_noise,
        step_noise=step_noise,
        image=image,
        **(before_notes or {}),
        notes=notes,
    )


def ort_vs_pt(diffs: list, case, img, pil, oimg) -> str:
    """ORT pipeline image `oimg` vs the PyTorch one (`img`, saved as `pil`): u8 = PNG pixels
    (0-255), f = float image x 255. Appends the record to `diffs` (for log_ort_table and
    make_fixtures' report.json) and returns it as text for the case's log line."""
    opil = np.asarray(to_pil(oimg)).astype(np.float32)
    d8 = np.abs(opil - np.asarray(pil).astype(np.float32))
    df = np.abs(oimg.astype(np.float64) - img.astype(np.float64)) * 255.0
    r = dict(name=case["name"], sampler=case["sampler"], mean_u8=float(d8.mean()), max_u8=float(d8.max()),
             mean_f=float(df.mean()), max_f=float(df.max()))
    diffs.append(r)
    return f"  ORT-vs-PT u8 mean {r['mean_u8']:.4f} max {r['max_u8']:.0f}  float*255 mean {r['mean_f']:.5f} max {r['max_f']:.4f}"


def log_ort_table(diffs: list):
    """The ort_vs_pt records as the markdown table in tools/README.md."""
    if not diffs:
        return
    log("== ORT vs PyTorch (markdown)")
    log("| case | sampler | u8 mean | u8 max | float×255 mean | float×255 max |")
    log("|---|---|---|---|---|---|")
    for r in diffs:
        log(f"| {r['name']} | {r['sampler']} | {r['mean_u8']:.4f} | {r['max_u8']:.0f} | {r['mean_f']:.5f} | {r['max_f']:.4f} |")


def finish(out: Path, manifest: list, diffs: list = (), verify: dict | None = None):
    """A script's last step: OUT/manifest.json, then the closing log lines (the rebuilt models'
    ONNX-vs-PyTorch check, the ORT table, and what the folder adds to the repository)."""
    write_json(out / "manifest.json", manifest)
    if verify is not None:
        log("== ONNX vs rebuilt PyTorch (max abs): " + json.dumps(verify))
    log_ort_table(diffs)
    total, new = disk_and_new_bytes(out, FIX / "models")
    log(f"== {out.name} fixtures: {total/1e6:.3f} MB on disk, {new/1e6:.3f} MB of content not already under models/")
