"""Rendering for the synthetic data set: attribute vocabulary, shape geometry, nuisance.

`render` draws one coloured shape on a grey background for an attribute tuple (shape,
colour, size, position); `render_scene` draws several, one per quadrant. Instances of one
tuple differ only by nuisance variation (position jitter inside the region, size jitter
inside the size band, small rotation, colour shade, background shade and noise) whose
ranges never cross an attribute boundary, so the tuple alone decides what an image shows.
All randomness comes from the caller's generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Attribute vocabulary. Order matters: it defines the full product and thus which tuples a
# seed draws, so append new values at the end only (and bump synth.FORMAT).
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
# Hues ~60 degrees apart so a tiny model separates them after the shade jitter below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (230, 210, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (150, 50, 210),
}
SIZES = ("small", "large")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
}
FULL_PRODUCT = math.prod(len(v) for v in ATTRIBUTES.values())

# Geometry in units of the image side. A shape's "radius" is its circumradius.
# Small shapes stay >= ~13 px across at 64 px so an 8-px-patch ViT can tell them apart; the
# bands leave a gap (0.13 -> 0.18) so no small instance is as big as any large one.
_RADIUS = {"small": (0.10, 0.13), "large": (0.18, 0.21)}
_REGION_CENTRE = {
    "top-left": (0.25, 0.25),
    "top-right": (0.75, 0.25),
    "bottom-left": (0.25, 0.75),
    "bottom-right": (0.75, 0.75),
    "centre": (0.5, 0.5),
}
_QUADRANT_JITTER = 0.07  # at most; also capped so the shape stays inside its quadrant
_QUADRANT_MARGIN = 0.02  # gap kept between a quadrant shape and the image midlines
_CENTRE_JITTER = 0.05  # keeps centre shapes well away from any quadrant's centre
_MAX_ROTATION_DEG = 12.0  # square vs diamond differ by 45 degrees; stay far from that
_SHADE_JITTER = 14  # per channel, on 0..255
_BACKGROUND = (80, 150)  # grey level range
_GRADIENT = 20.0  # grey levels across the image, each axis
_NOISE_SIGMA = 2.5
_SUPERSAMPLE = 2  # draw at 2x then box-downsample: cheap antialiasing


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices [k, 2] with circumradius <= 1, y pointing down, centred on the origin."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / math.sqrt(2)
    if shape == "diamond":  # taller than wide, so it differs from a square beyond rotation
        return np.array([[0, -1], [0.65, 0], [0, 1], [-0.65, 0]])
    if shape == "triangle":
        ang = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if shape == "star":
        ang = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    if shape == "cross":
        w, a = 0.32, 0.94  # arm half-width, arm length; corner radius stays under 1
        return np.array(
            [[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w],
             [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]]
        )  # fmt: skip
    raise ValueError(f"no polygon for shape {shape!r}")


_POLYGONS = {s: _unit_polygon(s) for s in SHAPES if s != "circle"}


def render(attributes: dict[str, str], image_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of the tuple, with nuisance variation drawn from `rng`."""
    return render_scene((attributes,), image_size, rng)


# Where the objects of a scene with more than one may sit: the quadrants. A large centre
# shape would overlap a large quadrant one, and the picture must show every object whole.
SCENE_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")


def render_scene(
    objects: Sequence[dict[str, str]], image_size: int, rng: np.random.Generator
) -> Image.Image:
    """One RGB image showing every object (attribute tuples at distinct positions; more than
    one only in `SCENE_POSITIONS`), with nuisance variation drawn from `rng`. One object
    draws exactly the random numbers, and so the pixels, that `render` always has."""
    positions = [o["position"] for o in objects]
    if not objects or len(set(positions)) != len(positions):
        raise ValueError(f"a scene needs objects at distinct positions, got {positions}")
    if len(objects) > 1 and not set(positions) <= set(SCENE_POSITIONS):
        raise ValueError(f"objects of a multi-object scene sit in {SCENE_POSITIONS}")
    shapes = [_draw_params(o, rng) for o in objects]
    grey = int(rng.integers(_BACKGROUND[0], _BACKGROUND[1] + 1))

    side = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(canvas)
    for o, (radius, cx, cy, angle, colour) in zip(objects, shapes, strict=True):
        if o["shape"] == "circle":
            r = radius * side
            draw.ellipse([cx * side - r, cy * side - r, cx * side + r, cy * side + r], fill=colour)
        else:
            rot = np.array(
                [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
            )
            pts = (_POLYGONS[o["shape"]] @ rot.T) * radius * side + (cx * side, cy * side)
            draw.polygon([tuple(p) for p in pts.tolist()], fill=colour)
    small = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)
    # Shade gradient and grey (not per-channel) noise: visible nuisance that leaves hue alone
    # and keeps PNGs ~3x smaller and faster to encode than per-channel noise.
    ramp = np.linspace(-0.5, 0.5, image_size, dtype=np.float32)
    gx, gy = rng.uniform(-_GRADIENT, _GRADIENT, 2).astype(np.float32)
    shade = gx * ramp[None, :] + gy * ramp[:, None]
    noise = rng.standard_normal((image_size, image_size), dtype=np.float32) * _NOISE_SIGMA
    out = np.rint(small + (shade + noise)[:, :, None])
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _draw_params(
    attributes: dict[str, str], rng: np.random.Generator
) -> tuple[float, float, float, float, tuple[int, ...]]:
    """(radius, centre x, centre y, rotation, RGB) of one object, in units of the side."""
    radius = rng.uniform(*_RADIUS[attributes["size"]])
    cx, cy = _REGION_CENTRE[attributes["position"]]
    if attributes["position"] == "centre":
        jitter = _CENTRE_JITTER
    else:  # keep the whole shape inside its quadrant, clear of the midlines
        jitter = min(_QUADRANT_JITTER, 0.25 - radius - _QUADRANT_MARGIN)
    cx += rng.uniform(-jitter, jitter)
    cy += rng.uniform(-jitter, jitter)
    angle = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    base = np.array(COLOURS[attributes["colour"]])
    shade = np.clip(base + rng.integers(-_SHADE_JITTER, _SHADE_JITTER + 1, 3), 0, 255)
    return radius, cx, cy, angle, tuple(int(c) for c in shade)
