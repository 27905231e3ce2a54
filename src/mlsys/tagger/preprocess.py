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

Safety: `decode_image` reads the header first and refuses images over `max_pixels` before
any pixel is decoded (a decompression bomb is a small file that decodes to gigabytes). The
typed errors carry the HTTP status the API answers with: 413 too large, 415 not an image,
422 an image that does not decode.
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


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
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
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP; "
            f"the limit is {max_pixels / 1e6:g} MP"
        )
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
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
    if img.mode.startswith("I"):  # 16/32-bit greyscale: scale into 8 bits
        arr = np.asarray(img, np.float64)
        peak = max(float(arr.max()), 255.0)
        img = Image.fromarray((arr * (255.0 / peak)).astype(np.uint8), "L")
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
