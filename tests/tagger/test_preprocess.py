"""The shared preprocessing: one bytes -> array path for training, evaluation and serving,
and the typed refusals (413/415/422) the API maps to HTTP answers."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlsys.tagger.data.render import encode_jpeg
from mlsys.tagger.preprocess import (
    CorruptImageError,
    ImageShapeError,
    ImageTooLargeError,
    NotAnImageError,
    PreprocessConfig,
    bytes_to_array,
    decode_image,
    decoded_bytes,
    denormalise,
    load_batch,
    load_image,
    to_array,
)


def _photo(width: int = 256, height: int = 256, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode_jpeg(Image.fromarray(pixels, "RGB"), 80)


def _png_header_only(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG that claims `width` x `height` but carries no pixels: a bomb's header
    (colour type 2: RGB, 0: greyscale; `depth` bits per sample)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_same_bytes_same_array_on_every_path(tmp_path: Path) -> None:
    """Training reads files, evaluation/predict read files in threads, the API gets request
    bytes, batching stacks them: all must hand the model the identical array."""
    data = _photo()
    path = tmp_path / "item.jpg"
    path.write_bytes(data)
    for cfg in (PreprocessConfig(), PreprocessConfig(size=160, mean=(0.5,) * 3, std=(0.5,) * 3)):
        served = bytes_to_array(data, cfg)  # the API
        from_file = to_array(load_image(path), cfg)  # training / evaluation / predict
        from_decoded = to_array(decode_image(data), cfg)
        batch = load_batch([data, data], cfg)
        assert served.dtype == np.float32 and served.shape == (3, cfg.size, cfg.size)
        assert served.flags.c_contiguous
        np.testing.assert_array_equal(served, from_file)
        np.testing.assert_array_equal(served, from_decoded)
        np.testing.assert_array_equal(served, batch[0])
        np.testing.assert_array_equal(batch[0], batch[1])
        # torch training batches wrap the same memory, no second conversion
        np.testing.assert_array_equal(torch.from_numpy(from_file).numpy(), served)
    # a config survives the model's JSON round trip (asdict -> json -> PreprocessConfig(**d))
    import dataclasses
    import json

    cfg = PreprocessConfig(size=192)
    back = PreprocessConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in json.loads(json.dumps(dataclasses.asdict(cfg))).items()
        }
    )
    np.testing.assert_array_equal(bytes_to_array(data, cfg), bytes_to_array(data, back))


def test_normalisation_and_aspect_preserving_pad() -> None:
    cfg = PreprocessConfig()
    mean_rgb = tuple(round(m * 255) for m in cfg.mean)
    flat = Image.new("RGB", (300, 300), mean_rgb)
    arr = to_array(flat, cfg)
    assert np.abs(arr).max() < 0.02  # the mean colour normalises to ~0
    # A portrait photo keeps its proportions: padded left and right, not stretched.
    portrait = Image.new("RGB", (100, 200), (255, 255, 255))
    arr = to_array(portrait, cfg)
    white = (1.0 - np.asarray(cfg.mean)) / np.asarray(cfg.std)
    np.testing.assert_allclose(arr[:, 112, 112], white, atol=1e-5)
    assert np.abs(arr[:, 112, 2]).max() < 0.02  # pad column
    assert np.abs(arr[:, 112, 221]).max() < 0.02
    # and back to a picture
    assert denormalise(to_array(flat, cfg), cfg).shape == (224, 224, 3)


def test_modes_are_normalised_to_rgb() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(buf, "PNG")  # fully transparent
    img = decode_image(buf.getvalue())
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255)  # onto white
    buf = io.BytesIO()
    Image.new("L", (40, 30), 90).save(buf, "PNG")
    assert decode_image(buf.getvalue()).getpixel((0, 0)) == (90, 90, 90)
    # EXIF orientation 6 (a phone held upright): decoded upright, width and height swap
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 20), (200, 10, 10)).save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (20, 60)


def test_typed_refusals_carry_http_status() -> None:
    with pytest.raises(NotAnImageError) as not_image:
        decode_image(b"%PDF-1.7 definitely not a photo")
    assert not_image.value.http_status == 415
    with pytest.raises(NotAnImageError):
        decode_image(b"")
    truncated = _photo()[:600]
    with pytest.raises(CorruptImageError) as corrupt:
        decode_image(truncated)
    assert corrupt.value.http_status == 422
    # 8000 x 6000 = 48 MP claimed by a 60-byte file: refused before any pixel is decoded
    with pytest.raises(ImageTooLargeError) as bomb:
        decode_image(_png_header_only(8000, 6000))
    assert bomb.value.http_status == 413 and "48.0 MP" in str(bomb.value)
    # just under the pixel limit passes that check (the header-only file then fails as
    # corrupt) when the memory budget allows it; by default it does not, see below
    with pytest.raises(CorruptImageError):
        decode_image(_png_header_only(8000, 4999), max_decoded_bytes=1 << 40)
    with pytest.raises(ImageTooLargeError):
        decode_image(_photo(64, 64), max_pixels=64 * 63)


def test_decoded_memory_is_budgeted_from_the_header_by_mode_and_shape() -> None:
    """Megapixels alone did not bound memory: a 1 x 39M PNG (76 KB) took 1.5 GB, a 16-bit
    6,320 x 6,320 PNG 1.24 GB. Both are now refused from the header, before decoding."""
    with pytest.raises(ImageShapeError) as thin:
        decode_image(_png_header_only(1, 39_000_000, colour=0))
    assert thin.value.http_status == 422 and "20x" in str(thin.value)
    with pytest.raises(ImageTooLargeError) as deep:
        decode_image(_png_header_only(6320, 6320, depth=16, colour=0))
    assert deep.value.http_status == 413 and "MiB" in str(deep.value)
    # bytes per pixel: raster + conversion copies + a possible EXIF rotation's copy
    budgets = [
        decoded_bytes(Image.open(io.BytesIO(_png_header_only(1000, 1000, d, c))))
        for d, c in ((16, 0), (8, 0), (8, 2))
    ]
    per_line = 1000 * 64
    assert budgets == [1000 * 1000 * n + per_line for n in (2 + 13 + 4, 1 + 4 + 4, 4 + 0 + 4)]
    # a 20:1 strip is still a picture
    with pytest.raises(CorruptImageError):
        decode_image(_png_header_only(40, 800))


def test_a_large_jpeg_decodes_reduced_to_the_same_model_input() -> None:
    """min_side lets libjpeg decode at 1/2..1/8 scale; after the resize to the model's input
    the array differs from the full decode's by resampling noise only."""
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8), "RGB")
    photo = encode_jpeg(small.resize((2400, 1800), Image.Resampling.BICUBIC), 90)
    reduced = decode_image(photo, min_side=448)
    full = decode_image(photo)
    assert full.size == (2400, 1800) and reduced.size == (600, 450)  # 1/4 scale
    diff = np.abs(to_array(reduced) - to_array(full))
    assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.1, (diff.mean(), diff.max())
    # images no larger than 2x min_side (training's 256 px ones) are not reduced at all
    assert decode_image(_photo(), min_side=448).size == (256, 256)
