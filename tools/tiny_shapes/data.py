"""tiny-shapes data: one coloured shape on a plain background, with a caption.

Every picture is a pure function of (seed, index): `sample(seed, i)` draws its own numpy
generator from both, so a data set is the same on every machine and a held-out set is just
another seed. Pictures are 128x128 RGB (uint8), drawn at 4x and box-filtered down so edges are
antialiased.

The vocabulary the model learns is small and fixed; `VOCABULARY` is what other code (the Rust
tests, a README) can mirror:

    colours  red green blue yellow orange purple white black   (RGB below)
    shapes   circle square triangle
    caption  "a red circle on a blue background" and a few other phrasings

    python tools/tiny_shapes/data.py --show /tmp/shapes.png   # a contact sheet of 32 samples
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128  # pixels per side
SUPERSAMPLE = 4  # drawn at 4x, then box-filtered down (antialiased edges)

# Colour names -> RGB. Plainly named, far apart from each other.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (150, 40, 200),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

SIDE_RANGE = (0.3, 0.7)  # side (circle: diameter; triangle: base) as a fraction of SIZE
MAX_JITTER = 12.0  # px the centre may move from the middle, each axis (less for large shapes)

# Caption phrasings and how often each is used. The first is the canonical one (the form
# RECIPE.md and the README use); the others teach that word order and filler do not matter.
PHRASINGS: tuple[tuple[str, float], ...] = (
    ("{a_shape_colour} {colour} {shape} on {a_background} {background} background", 0.5),
    ("{colour} {shape}, {background} background", 0.125),
    ("{a_shape_colour} {colour} {shape} against {a_background} {background} background", 0.125),
    ("{a_background} {background} background with {a_shape_colour} {colour} {shape}", 0.125),
    ("{a_shape_colour} {colour} {shape} on {background}", 0.125),
)
EMPTY_CAPTION_PROB = 0.1  # caption dropout while training (classifier-free guidance)

VOCABULARY = {
    "colours": {k: list(v) for k, v in COLOURS.items()},
    "shapes": list(SHAPES),
    "phrasings": [p for p, _ in PHRASINGS],
    "canonical": "a {colour} {shape} on a {background} background",
    "size": SIZE,
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(colour: str, shape: str, background: str, phrasing: int = 0) -> str:
    """A caption in plain English, e.g. caption("red", "circle", "blue") ==
    "a red circle on a blue background" (and "an orange square on a white background")."""
    return PHRASINGS[phrasing][0].format(
        colour=colour, shape=shape, background=background,
        a_shape_colour=article(colour), a_background=article(background),
    )


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 [SIZE, SIZE, 3]
    caption: str
    colour: str
    shape: str
    background: str
    side: float  # px
    centre: tuple[float, float]  # (x, y) px


def draw(shape: str, colour: str, background: str, side: float, centre: tuple[float, float]) -> np.ndarray:
    """Render one picture: `shape` of `side` px centred at `centre` (x, y) on `background`."""
    s = SUPERSAMPLE
    im = Image.new("RGB", (SIZE * s, SIZE * s), COLOURS[background])
    d = ImageDraw.Draw(im)
    cx, cy, r = centre[0] * s, centre[1] * s, side * s / 2
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":  # axis-aligned
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":  # equilateral, apex up, centred on its bounding box
        h = side * s * math.sqrt(3) / 2
        d.polygon([(cx, cy - h / 2), (cx + r, cy + h / 2), (cx - r, cy + h / 2)], fill=fill)
    else:
        raise ValueError(shape)
    im = im.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(im, dtype=np.uint8)


def sample(seed: int, index: int) -> Sample:
    """Picture number `index` of the data set `seed`: a random shape, colour, different
    background colour, size, position and caption phrasing."""
    rng = np.random.default_rng([seed, index])
    colour = str(rng.choice(list(COLOURS)))
    background = str(rng.choice([c for c in COLOURS if c != colour]))
    shape = str(rng.choice(SHAPES))
    side = float(rng.uniform(*SIDE_RANGE)) * SIZE
    # Jitter at most 12 px, and at most half the free space on each side, so large shapes
    # stay well inside the frame (side 0.7*128 = 89.6 px leaves 19.2 px per side -> 9.6 px).
    j = min(MAX_JITTER, (SIZE - side) / 4)
    centre = (SIZE / 2 + float(rng.uniform(-j, j)), SIZE / 2 + float(rng.uniform(-j, j)))
    phrasing = int(rng.choice(len(PHRASINGS), p=[w for _, w in PHRASINGS]))
    img = draw(shape, colour, background, side, centre)
    return Sample(img, caption(colour, shape, background, phrasing), colour, shape, background, side, centre)


def make_dataset(n: int, seed: int):
    """(images uint8 [n, SIZE, SIZE, 3], captions list[str], labels list[dict]) for indices 0..n-1."""
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    captions, labels = [], []
    for i in range(n):
        s = sample(seed, i)
        images[i] = s.image
        captions.append(s.caption)
        labels.append(dict(colour=s.colour, shape=s.shape, background=s.background))
    return images, captions, labels


def drop_captions(captions: list[str], rng: np.random.Generator, p: float = EMPTY_CAPTION_PROB) -> list[str]:
    """Replace each caption by "" with probability p (drawn fresh every training step), so the
    model also learns the unconditional prediction that classifier-free guidance and negative
    prompts push against."""
    keep = rng.random(len(captions)) >= p
    return [c if k else "" for c, k in zip(captions, keep)]


def to_tensor_range(images: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] -> float32 [n, 3, H, W] in -1..1 (what the VAE sees)."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


# --------------------------------------------------------------------------------------
# Judging a generated picture (for held-out checks while training)
# --------------------------------------------------------------------------------------


def nearest_colour(rgb) -> str:
    rgb = np.asarray(rgb, dtype=np.float32)
    return min(COLOURS, key=lambda c: float(np.sum((np.asarray(COLOURS[c], np.float32) - rgb) ** 2)))


def judge(image: np.ndarray) -> dict:
    """Read (background, colour, shape) back from a picture: the background colour is the
    median of a 4-px border, the shape colour the median of the pixels far from it, and the
    shape class how much of its box the shape fills (square ~1, circle ~0.87, triangle ~0.63
    with the trimmed box below). The shape is the set of pixels nearer the shape colour than the
    background's, and its box spans the 1st-99th percentile of their coordinates, so that
    a blurry edge or a few stray pixels of a generated picture do not inflate it."""
    a = image.astype(np.float32)
    border = np.concatenate([a[:4].reshape(-1, 3), a[-4:].reshape(-1, 3), a[:, :4].reshape(-1, 3), a[:, -4:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    far = np.sqrt(((a - bg) ** 2).sum(-1)) > 60
    if far.sum() < 20:
        return dict(background=nearest_colour(bg), colour=None, shape=None, fill=0.0)
    fg = np.median(a[far], axis=0)
    mask = ((a - fg) ** 2).sum(-1) < ((a - bg) ** 2).sum(-1)
    ys, xs = np.nonzero(mask)
    (y0, y1), (x0, x1) = np.percentile(ys, [1, 99]), np.percentile(xs, [1, 99])
    box = (y1 - y0 + 1) * (x1 - x0 + 1)
    fill = float(mask.sum() / box)
    shape = "square" if fill > 0.94 else "circle" if fill > 0.77 else "triangle"
    return dict(background=nearest_colour(bg), colour=nearest_colour(fg), shape=shape, fill=fill)


def held_out_prompts():
    """24 checks like RECIPE.md's: every colour as the shape colour, with each of the 3 shapes,
    on another background (fixed choice, so runs compare)."""
    rng = np.random.default_rng(24)
    out = []
    for shape in SHAPES:
        for colour in COLOURS:
            bg = str(rng.choice([c for c in COLOURS if c != colour]))
            out.append(dict(colour=colour, shape=shape, background=bg, prompt=caption(colour, shape, bg)))
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--show", default="/tmp/tiny-shapes-data.png", help="write a contact sheet of 32 samples here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sheet = Image.new("RGB", (SIZE * 8, SIZE * 4))
    ok = 0
    for i in range(32):
        s = sample(args.seed, i)
        sheet.paste(Image.fromarray(s.image), (SIZE * (i % 8), SIZE * (i // 8)))
        j = judge(s.image)
        ok += (j["colour"], j["shape"], j["background"]) == (s.colour, s.shape, s.background)
        print(f"{i:2d} {s.caption!r:60} judged {j['colour']} {j['shape']} on {j['background']} (fill {j['fill']:.2f})")
    sheet.save(args.show)
    print(f"judge agrees on {ok}/32; sheet: {args.show}")
