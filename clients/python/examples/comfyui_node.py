"""A ComfyUI node that generates with easel: drop this file into ComfyUI/custom_nodes/.

It shows the shape of a plugin node: ComfyUI's INPUT_TYPES / RETURN_TYPES / FUNCTION, the
generation streamed from the daemon (progress goes to ComfyUI's progress bar; ComfyUI's
"cancel" hangs up, which cancels the job in the daemon), and the PNGs decoded into the
[batch, height, width, 3] float array in 0..1 that ComfyUI calls IMAGE.

ComfyUI's own modules (and torch) are imported only when present, so this file also imports,
and runs as a script, anywhere `easel-client` and Pillow are installed:

    python comfyui_node.py "a red circle"
"""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np

import easel

try:  # Inside ComfyUI: its progress bar and its "cancel" button.
    import comfy.model_management as comfy_management
    import comfy.utils as comfy_utils
except ImportError:
    comfy_management = None
    comfy_utils = None

try:  # ComfyUI passes IMAGE as a torch tensor; elsewhere a numpy array does.
    import torch
except ImportError:
    torch = None


def png_to_array(png: bytes) -> np.ndarray:
    """An encoded PNG as a [height, width, 3] float32 array in 0..1."""
    from PIL import Image as PilImage  # ComfyUI ships Pillow; imported here to keep imports light

    with PilImage.open(io.BytesIO(png)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


class EaselGenerate:
    """Text to image with the easel daemon (which must be running: `easel daemon start`)."""

    CATEGORY = "easel"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - the name ComfyUI looks for
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64}),
                "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 150}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16}),
            },
            "optional": {
                # Empty: the daemon's default model. A name from `easel models list`, or a folder.
                "model": ("STRING", {"default": ""}),
            },
        }

    def generate(
        self,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        steps: int,
        cfg: float,
        seed: int,
        batch_size: int,
        model: str = "",
    ) -> tuple[Any]:
        # One Progress event per step of each image (a batch's images may advance together).
        progress_bar = comfy_utils.ProgressBar(steps * batch_size) if comfy_utils else None
        steps_done = 0
        pictures: list[np.ndarray] = []
        try:
            with (
                easel.Client() as client,
                client.generate(
                    prompt,
                    model=model or None,
                    negative_prompt=negative_prompt,
                    width=width,
                    height=height,
                    steps=steps,
                    guidance_scale=cfg,
                    seed=seed,
                    count=batch_size,
                ) as events,
            ):
                for event in events:
                    if comfy_management:
                        # Raises when the user cancels in ComfyUI; leaving the with block then
                        # hangs up, and the daemon stops the job at its next step.
                        comfy_management.throw_exception_if_processing_interrupted()
                    if isinstance(event, easel.Progress) and progress_bar:
                        steps_done += 1
                        progress_bar.update_absolute(steps_done)
                    elif isinstance(event, easel.Image):
                        pictures.append(png_to_array(event.png))
        except easel.EaselError as error:
            # Shown in ComfyUI's error dialog; the daemon's message says what to do.
            raise RuntimeError(f"easel: {error.message}") from error
        batch = np.stack(pictures)
        return (torch.from_numpy(batch) if torch is not None else batch,)


NODE_CLASS_MAPPINGS = {"EaselGenerate": EaselGenerate}
NODE_DISPLAY_NAME_MAPPINGS = {"EaselGenerate": "Generate (easel)"}


if __name__ == "__main__":
    # Outside ComfyUI: run the node once with small settings and describe what it returns.
    (images,) = EaselGenerate().generate(
        sys.argv[1] if len(sys.argv) > 1 else "a red circle", "", 128, 128, 4, 7.5, 1, 1
    )
    low, high = float(images.min()), float(images.max())
    print(f"{type(images).__name__} {tuple(images.shape)} {images.dtype}, values in [{low:.2f}, {high:.2f}]")
