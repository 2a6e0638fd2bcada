"""Image decoding and preprocessing for serving, equal to open_clip's eval transform, no torch.

open_clip's ``preprocess_val`` for resize mode "shortest" is torchvision's
``Resize(size) -> CenterCrop(size) -> convert('RGB') -> ToTensor -> Normalize``. On PIL
images torchvision calls PIL itself, so doing the same PIL calls in the same order (resize in
the image's own mode, *then* convert to RGB) reproduces it exactly; only the final float
arithmetic is re-stated, in float32 as torch does it.

Serving decodes with a bound on memory (`open_image` -> `plan_decode` -> `load_pixels`):
a JPEG is decoded by libjpeg's DCT-domain downscale (PIL's draft mode, 1/2 to 1/8) to no less
than `oversample` x the model's input size, so a 40-megapixel photo costs a few hundred
thousand pixels instead of 40 million; the resize then runs from there. Other formats decode
whole (their decoders cannot scale) and are released as soon as the model input is cut. The
result stays within a tested tolerance of open_clip's transform on the full image
(tests/test_memory.py).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipserve.serving.bundle import Manifest
from clipserve.serving.errors import InvalidInput

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, WebP, ...) into a loaded PIL image, full size.

    Raises InvalidInput for empty, over-`max_bytes`, undecodable or truncated data, and for
    images over `max_pixels` (width x height), checked from the header before decoding pixels
    so a decompression bomb costs nothing.
    """
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    load_pixels(image)
    return image


def open_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Parse the header only (no pixels decoded yet) and check size limits; InvalidInput
    as `decode_image`. Call `plan_decode`, then `load_pixels`."""
    if not data:
        raise InvalidInput("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidInput(f"image is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns (then errors at 2x) above its own global bomb limit; ours is explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(
                    f"image is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels} pixels"
                )
            if width == 0 or height == 0:
                raise InvalidInput(f"image has no pixels ({width}x{height})")
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("image data is not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated/corrupt streams
        raise InvalidInput(f"image could not be decoded: {exc}") from exc
    return image


@dataclass(frozen=True)
class DecodePlan:
    pixels: int  # width x height the decoder will produce
    # After a JPEG draft: the region of the reduced image that holds the whole original (the
    # decoder rounds partial blocks up), so resizing maps exactly the original's geometry.
    box: tuple[float, float, float, float] | None = None


def plan_decode(image: Image.Image, size: tuple[int, int], oversample: float = 2.0) -> DecodePlan:
    """Ask the decoder for the smallest version of `image` whose shorter side is still at
    least `oversample` x the model's side (JPEG only: DCT scaling by 1/2, 1/4, 1/8). A no-op
    for other formats and small images."""
    box = None
    if image.format == "JPEG" and oversample > 0:
        w, h = image.size
        short = min(w, h)
        want = max(1, int(round(oversample * min(size))))
        if short >= 2 * want:
            scale = want / short
            drafted = image.draft(image.mode, (max(1, int(w * scale)), max(1, int(h * scale))))
            if drafted is not None and image.size != (w, h):
                box = tuple(float(v) for v in drafted[1])  # type: ignore[assignment]
    w, h = image.size
    return DecodePlan(w * h, box)  # type: ignore[arg-type]


def load_pixels(image: Image.Image) -> None:
    """Decode the pixels (after `plan_decode`); InvalidInput for corrupt or truncated data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"image rejected as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated/corrupt streams
        raise InvalidInput(f"image could not be decoded: {exc}") from exc


def resize_crop(
    image: Image.Image,
    size: tuple[int, int],
    interpolation: str,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """torchvision ``Resize(int) + CenterCrop`` on a PIL image, in the image's own mode.

    The shorter side becomes `size` (the longer one ``int(size * long / short)``, as
    torchvision truncates), then the centre is cut out with torchvision's rounding. `box`
    (from `plan_decode`) is the part of a draft-decoded image that stands for the original.
    """
    height, width = size
    if height != width:
        raise ValueError(f"shortest-side resize needs a square image size, got {size}")
    w, h = (box[2] - box[0], box[3] - box[1]) if box else image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = height, int(height * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if box is not None or (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), _RESAMPLE[interpolation], box=box)
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def to_rgb(image: Image.Image) -> Image.Image:
    """open_clip's ``_convert_to_rgb``: PIL's own conversion (alpha dropped, CMYK/P/L mapped)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess(images: Sequence[Image.Image], manifest: Manifest) -> np.ndarray:
    """PIL images -> float32 [N, 3, H, W], normalised with the manifest's mean/std."""
    if manifest.resize_mode != "shortest":
        raise ValueError(f"unsupported resize mode {manifest.resize_mode!r}")
    if manifest.interpolation not in _RESAMPLE:
        raise ValueError(f"unsupported interpolation {manifest.interpolation!r}")
    height, width = manifest.image_size
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess_one(image, manifest)
    return out


def preprocess_one(
    image: Image.Image, manifest: Manifest, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """One PIL image -> float32 [3, H, W], as `preprocess` (without its checks)."""
    mean = np.asarray(manifest.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(manifest.std, dtype=np.float32).reshape(3, 1, 1)
    rgb = to_rgb(resize_crop(image, manifest.image_size, manifest.interpolation, box))
    pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    return (pixels / np.float32(255.0) - mean) / std


def decode_for_model(
    data: bytes, manifest: Manifest, *, max_bytes: int, max_pixels: int, oversample: float = 2.0
) -> np.ndarray:
    """Encoded bytes -> float32 [3, H, W] through the bounded-memory path (no budget; the
    service interleaves `open_image` / `plan_decode` / budget / `load_pixels` itself)."""
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        plan = plan_decode(image, manifest.image_size, oversample)
        load_pixels(image)
        return preprocess_one(image, manifest, plan.box)
    finally:
        image.close()
