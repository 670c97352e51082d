"""Drives easel's HTTP gateway with the `openai` package, unchanged, as agent tools and chat
front ends use it. argv: the gateway's base URL, then optionally a token (the API key).
Prints one JSON line with what it saw; any failed expectation raises."""

import base64
import io
import json
import sys

import openai
from PIL import Image

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2] if len(sys.argv) > 2 else "unused")
seen = {"openai": openai.__version__}

models = [m.id for m in client.models.list()]
assert models, "the installed models"
seen["models"] = models

# OpenAI's own model name means the daemon's default model.
generated = client.images.generate(model="gpt-image-1", prompt="a red circle", n=2, size="128x128",
                                   response_format="b64_json")
assert len(generated.data) == 2
pictures = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in generated.data]
assert all(p.size == (128, 128) for p in pictures)
assert generated.data[0].b64_json != generated.data[1].b64_json, "n pictures, each its own"
seen["generate"] = len(generated.data)

as_url = client.images.generate(model="dall-e-3", prompt="a blue square", size="64x64", response_format="url")
assert as_url.data[0].url.startswith("data:image/png;base64,")
by_name = client.images.generate(model=models[0], prompt="a blue square", size="64x64")
assert by_name.data[0].b64_json

# Edit with a mask: transparent = repaint, the rest stays.
init = pictures[0].convert("RGB")
image_file = io.BytesIO()
init.save(image_file, "PNG")
mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
mask.paste((0, 0, 0, 0), (32, 32, 96, 96))
mask_file = io.BytesIO()
mask.save(mask_file, "PNG")
edited = client.images.edit(model="gpt-image-1", image=("init.png", image_file.getvalue(), "image/png"),
                            mask=("mask.png", mask_file.getvalue(), "image/png"), prompt="a green triangle",
                            size="128x128")
out = Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).convert("RGB")
assert out.size == (128, 128)
assert out.getpixel((2, 2)) == init.getpixel((2, 2)), "outside the mask the image stays"
assert out.tobytes() != init.tobytes()
# No mask, an opaque picture: redrawn as a whole (img2img).
whole = client.images.edit(image=("init.png", image_file.getvalue(), "image/png"), prompt="a green triangle")
assert whole.data[0].b64_json
seen["edit"] = True

# Streaming: partial images (real decodes of the picture so far), then the picture.
events = list(client.images.generate(model="gpt-image-1", prompt="a red circle", size="128x128", stream=True,
                                     partial_images=2, extra_body={"steps": 6, "seed": 3}))
kinds = [event.type for event in events]
assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
assert [event.partial_image_index for event in events[:2]] == [0, 1]
final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
assert final.size == (128, 128) and Image.open(io.BytesIO(base64.b64decode(events[0].b64_json))).size == (128, 128)
seen["stream"] = kinds

# Errors in OpenAI's shape, with the daemon's words.
try:
    client.images.generate(model="no-such-model", prompt="x")
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as error:
    assert error.status_code == 404 and models[0] in str(error), str(error)
    seen["unknown_model"] = error.body.get("message") if isinstance(error.body, dict) else str(error)
try:
    client.images.generate(prompt="x", size="100x100")
    raise AssertionError("a size the model cannot draw must fail")
except openai.BadRequestError as error:
    assert error.status_code == 400 and "multiple" in str(error), str(error)
    seen["bad_size"] = str(error)

print(json.dumps({"ok": True, **seen}))
