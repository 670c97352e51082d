"""Drives easel's HTTP gateway with the `webuiapi` package, unchanged, as AUTOMATIC1111
plugins and scripts use it. argv: the gateway's base URL, then optionally a token (sent as
HTTP Basic auth, A1111's --api-auth convention; with one, only a short check runs). Prints one JSON line with what it saw; any
failed expectation raises (non-zero exit, traceback on stderr)."""

import io
import json
import sys
import threading
import time
from urllib.parse import urlparse

import webuiapi
from PIL import Image

base = urlparse(sys.argv[1])
token = sys.argv[2] if len(sys.argv) > 2 else None
if token:
    api = webuiapi.WebUIApi(host=base.hostname, port=base.port, username="easel", password=token)
else:
    api = webuiapi.WebUIApi(host=base.hostname, port=base.port)
seen = {"webuiapi": webuiapi.__version__ if hasattr(webuiapi, "__version__") else "?"}

# Models, and switching them the way plugins do.
models = api.get_sd_models()
assert models and all({"title", "model_name", "hash", "sha256", "filename", "config"} <= m.keys() for m in models), models
seen["models"] = [m["title"] for m in models]
if token:
    # Behind a token: that the credentials get through is the point; the rest is tested without.
    quick = api.txt2img(prompt="a red circle", seed=1, steps=2, width=64, height=64)
    assert len(quick.images) == 1 and quick.info["seed"] == 1
    print(json.dumps({"ok": True, "authenticated": True, **seen}))
    sys.exit(0)
api.util_set_model(models[0]["title"])
assert api.util_get_current_model() == models[0]["title"]
seen["samplers"] = api.util_get_sampler_names()
seen["schedulers"] = api.util_get_scheduler_names()
for listing in (api.get_upscalers, api.get_sd_vae, api.get_loras, api.get_prompt_styles):
    assert isinstance(listing(), list)

# txt2img: a batch, a fixed seed, an A1111 sampler + schedule.
result = api.txt2img(prompt="a red circle", negative_prompt="blurry", seed=1234, steps=3, cfg_scale=6.5,
                     width=128, height=128, sampler_name="DPM++ 2M", scheduler="Karras", batch_size=2)
info = result.info
assert isinstance(info, dict), "info must be a JSON string the client can load"
assert len(result.images) == 2 and result.images[0].size == (128, 128)
assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234, info
assert info["all_prompts"] == ["a red circle"] * 2 and info["negative_prompt"] == "blurry"
assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (128, 128, 3, 6.5), info
assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras"), info
assert info["sd_model_name"] == models[0]["title"]
assert len(info["infotexts"]) == 2 and "Seed: 1235" in info["infotexts"][1], info["infotexts"]
for key in ("subseed", "all_negative_prompts", "batch_size", "job_timestamp", "clip_skip", "version"):
    assert key in info, key
seen["txt2img_info"] = {k: info[k] for k in ("seed", "all_seeds", "sampler_name", "scheduler", "steps", "cfg_scale")}

# The same seed twice: the same picture.
again = api.txt2img(prompt="a red circle", negative_prompt="blurry", seed=1234, steps=3, cfg_scale=6.5,
                    width=128, height=128, sampler_name="DPM++ 2M", scheduler="Karras")
assert again.images[0].tobytes() == result.images[0].tobytes()
# -1: a random seed, reported back.
random_seed = api.txt2img(prompt="a blue square", seed=-1, steps=2, width=64, height=64).info["seed"]
assert isinstance(random_seed, int) and 0 <= random_seed < 2**32, random_seed
seen["random_seed"] = random_seed

# png-info reads the parameters back.
png = api.png_info(result.images[0])
assert "Seed: 1234" in png.info["info"] if isinstance(png.info, dict) else True
raw_png = png.json
assert raw_png["parameters"]["Seed"] == "1234" and raw_png["parameters"]["Size-1"] == "128", raw_png
seen["png_info"] = raw_png["parameters"]["Prompt"]

# img2img, and inpainting: outside the mask the picture stays the init image.
init = result.images[0].convert("RGB")
img2img = api.img2img(images=[init], prompt="a blue square", denoising_strength=0.6, steps=4, seed=5,
                      width=128, height=128)
assert img2img.images[0].size == (128, 128) and img2img.info["denoising_strength"] == 0.6
mask = Image.new("L", (128, 128), 0)
mask.paste(255, (32, 32, 96, 96))
inpainted = api.img2img(images=[init], mask_image=mask, mask_blur=0, prompt="a green triangle",
                        denoising_strength=1.0, steps=4, seed=6, width=128, height=128)
out = inpainted.images[0].convert("RGB")
assert out.getpixel((2, 2)) == init.getpixel((2, 2)), (out.getpixel((2, 2)), init.getpixel((2, 2)))
assert out.tobytes() != init.tobytes()
inverted = api.img2img(images=[init], mask_image=mask, mask_blur=0, inpainting_mask_invert=1,
                       prompt="a green triangle", denoising_strength=1.0, steps=4, seed=6, width=128, height=128)
out = inverted.images[0].convert("RGB")
assert out.getpixel((64, 64)) == init.getpixel((64, 64)), "inverted: the centre is kept"
seen["inpainting"] = True

# Progress while a long job runs, then interrupt it.
idle = api.get_progress()
assert idle["progress"] == 0 and idle["state"]["job_count"] == 0, idle
box = {}
worker = threading.Thread(target=lambda: box.setdefault("result", api.txt2img(prompt="a slow picture", steps=400, width=256, height=256)))
worker.start()
progress = None
for _ in range(600):
    progress = api.get_progress()
    if progress["state"]["sampling_step"] >= 2 and progress["current_image"]:
        break
    time.sleep(0.05)
assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 400, progress
assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0, progress
assert Image.open(io.BytesIO(__import__("base64").b64decode(progress["current_image"]))).size[0] > 0
seen["progress"] = {"progress": progress["progress"], "step": progress["state"]["sampling_step"]}
api.interrupt()
worker.join(60)
assert not worker.is_alive(), "interrupt ends the request"
assert box["result"].info["interrupted"] is True
assert api.get_progress()["state"]["job_count"] == 0
seen["interrupted"] = True

print(json.dumps({"ok": True, **seen}))
