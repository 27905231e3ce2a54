"""Image bytes -> model input: the one path shared by training, evaluation and serving.

A model is only as good as the agreement between how its training images and its served
images were prepared, so there is one chain from bytes to array and every caller uses it:

    decode_image  bytes -> RGB PIL image, with safety checks (size, format, corruption)
    load_image    a file -> its bytes -> decode_image (files take the upload path, not a
                  separate PIL.open, so training/predict and the API cannot drift)
    to_array      aspect-preserving bilinear resize onto a square canvas padded with the
                  mean colour (a portrait dress keeps its length-to-width ratio, the cue that
                  separates mini from casual dresses; padding normalises to 0), then
                  float32 CHW normalised with the config's mean/std
    bytes_to_array / load_batch   the whole chain in one call

`PreprocessConfig` (size, mean, std) is stored with a trained model, so a server rebuilds
exactly the training transform. Training-time augmentation, where wanted, happens on the PIL
image between decode and `to_array`; it is the trainer's, and off for evaluation and serving.

Safety: `decode_image` reads the header first and judges the image before any pixel is
decoded (a decompression bomb is a small file that decodes to gigabytes):

- more than `max_pixels` -> 413;
- a side more than `MAX_ASPECT` times the other -> 422: a 1 x 39,000,000 PNG is 76 KB on
  the wire, and PIL keeps a pointer and a line per row, so it took 1.5 GB to decode;
- `decoded_bytes` over `max_decoded_bytes` -> 413. Megapixels alone do not bound memory: a
  16-bit PNG is converted through wider arrays, transparency and EXIF rotation add copies.
  `decoded_bytes` is an upper bound of what decoding and converting to RGB holds at its peak,
  from the header's size and mode;
- `min_side` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while both
  sides stay >= min_side. The API passes 1,024 (`api.MIN_DECODE_SIDE`), so a 40-megapixel
  photo decodes to ~2.5 megapixels, a sixteenth of the memory and time, while any image with
  a short side under 2,048 px, the training images (256 px) included, decodes in full. The
  result is resized to the model's input anyway, so a reduced decode changes that input by
  resampling noise (tests/tagger/test_preprocess.py measures it).

The typed errors carry the HTTP status the API answers with: 413 too large, 415 not an image,
422 an image that does not decode or has unusable dimensions.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from mlsys.errors import MlsysError

DEFAULT_SIZE = 224
MAX_PIXELS = 40_000_000
MAX_BYTES = 25 * 1024 * 1024
MAX_ASPECT = 20.0
# Offline tools (training, predict, evaluate) decode one image at a time: a 40-megapixel RGB
# JPEG at full scale, 40M x 4 bytes = 160 MB, fits. The server passes its own, smaller budget
# (tagger.api.SERVING_DECODE_BYTES).
MAX_DECODED_BYTES = 192 * 1024 * 1024
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = Image.Resampling.BILINEAR

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreprocessConfig:
    """What a model expects; saved with the model (`dataclasses.asdict`) and rebuilt from it."""

    size: int = DEFAULT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class ImageError(MlsysError):
    """An image we will not process; `http_status` is the API's answer."""

    http_status = 400


class ImageTooLargeError(ImageError):
    http_status = 413


class NotAnImageError(ImageError):
    http_status = 415


class CorruptImageError(ImageError):
    http_status = 422


class ImageShapeError(ImageError):
    """Dimensions no photo has (a side many times the other); decoding them costs far more
    memory per pixel than a photo's."""

    http_status = 422


# PIL's bytes per pixel in memory: 1- and 8-bit modes take one, 16-bit greyscale two, every
# other mode (RGB included, padded to four bands) four.
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_EXIF_ORIENTATION = 0x0112


def decoded_bytes(img: Image.Image) -> int:
    """Upper bound of the bytes `decode_image` holds at once for an opened (not yet loaded)
    image: the raster, the copies `_to_rgb` makes for its mode, an EXIF rotation's copy."""
    width, height = img.size
    stored = _STORED.get(img.mode, 4)
    if img.mode.startswith(("I", "F")):
        extra = 4 + 4 + 1 + 4  # array copy, scaled float32, 8-bit grey, RGB
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        extra = 4 + 4  # RGBA copy, RGB canvas
    elif img.mode != "RGB":
        extra = 4  # RGB copy
    else:
        extra = 0
    per_pixel = stored + extra + (4 if _may_rotate(img) else 0)
    return width * height * per_pixel + height * 64  # + PIL's per-line bookkeeping


def _may_rotate(img: Image.Image) -> bool:
    """Whether `exif_transpose` may copy the raster. JPEG keeps EXIF in its header; other
    formats may keep it after the pixels (PNG's getexif() decodes the image to find it), so
    for them the copy is budgeted unless the header already showed an upright EXIF."""
    if img.format in ("JPEG", "MPO") or "exif" in img.info:
        return img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
    return True


def decode_image(
    data: bytes,
    max_pixels: int = MAX_PIXELS,
    *,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    min_side: int | None = None,
) -> Image.Image:
    """Decode `data` into an RGB image, or raise one of the typed errors above."""
    if len(data) > MAX_BYTES:
        raise ImageTooLargeError(f"image is {len(data):,} bytes; the limit is {MAX_BYTES:,}")
    if not data:
        raise NotAnImageError("empty body: not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImageError("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError("image dimensions exceed the decompression limit") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"image header does not decode ({exc})") from None
    if img.format not in ALLOWED_FORMATS:
        raise NotAnImageError(f"image format {img.format} is not accepted")
    width, height = img.size
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP; "
            f"the limit is {max_pixels / 1e6:g} MP"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageShapeError(
            f"image is {width}x{height}; one side may be at most {MAX_ASPECT:g}x the other"
        )
    try:
        if min_side is not None and img.format in ("JPEG", "MPO"):
            img.draft(None, (min_side, min_side))  # header only: picks the DCT scale
        cost = decoded_bytes(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"image header does not decode ({exc})") from None
    if cost > max_decoded_bytes:
        raise ImageTooLargeError(
            f"image is {width}x{height} in mode {img.mode}: decoding it takes about "
            f"{cost / 2**20:.0f} MiB; the limit is {max_decoded_bytes / 2**20:.0f} MiB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            upright = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
            return _to_rgb(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError("image dimensions exceed the decompression limit") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(f"image data is truncated or corrupt ({exc})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Transparent product shots go onto white, as a marketplace page shows them."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode.startswith(("I", "F")):  # 16/32-bit greyscale: scale into 8 bits
        arr = np.array(img, np.float32)  # a writable copy; float32 halves float64's peak
        peak = max(float(arr.max()), 255.0)
        arr *= 255.0 / peak
        img = Image.fromarray(arr.astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A file's image, through the same bytes path as an upload."""
    return decode_image(Path(path).read_bytes(), max_pixels=max_pixels)


def fit(
    img: Image.Image, size: int, pad_rgb: tuple[int, int, int] = (124, 116, 104)
) -> Image.Image:
    """Aspect-preserving bilinear resize onto a `size` x `size` canvas of `pad_rgb`."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((nw, nh), RESAMPLE)
    if (nw, nh) == (size, size):
        return resized
    canvas = Image.new("RGB", (size, size), pad_rgb)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def to_array(img: Image.Image, config: PreprocessConfig | None = None) -> FloatArray:
    """RGB image -> (3, size, size) float32, normalised with the config's mean/std."""
    cfg = config or PreprocessConfig()
    mean = np.asarray(cfg.mean, np.float32)
    std = np.asarray(cfg.std, np.float32)
    pad = (mean * 255 + 0.5).astype(int)
    fitted = fit(img if img.mode == "RGB" else img.convert("RGB"), cfg.size,
                 (int(pad[0]), int(pad[1]), int(pad[2])))  # fmt: skip
    arr = np.asarray(fitted, np.float32) / 255.0
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def bytes_to_array(data: bytes, config: PreprocessConfig | None = None) -> FloatArray:
    """The model input for one image's bytes: decode_image then to_array."""
    return to_array(decode_image(data), config)


def load_batch(items: Sequence[bytes], config: PreprocessConfig | None = None) -> FloatArray:
    """A (n, 3, size, size) batch, each item through `bytes_to_array`."""
    cfg = config or PreprocessConfig()
    out = np.empty((len(items), 3, cfg.size, cfg.size), np.float32)
    for i, data in enumerate(items):
        out[i] = bytes_to_array(data, cfg)
    return out


def denormalise(arr: FloatArray, config: PreprocessConfig | None = None) -> npt.NDArray[np.uint8]:
    """A model input back to an HWC uint8 picture (notebooks, debugging)."""
    cfg = config or PreprocessConfig()
    hwc = arr.transpose(1, 2, 0) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    out: npt.NDArray[np.uint8] = np.clip(hwc * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
