"""POST /tag through the platform server with only the tagger mounted: answers and every error
case, every body checked as strict JSON."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from mlsys.tagger.schema import CATEGORIES, TAGS
from mlsys.tagger.serving.api import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def client(tagger_model: Path, json_bodies: Any) -> Iterator[TestClient]:
    """The platform server with only the tagger mounted, as `mlsys serve` builds it."""
    from mlsys.compose.app import build_app
    from mlsys.platform.settings import Settings

    app = build_app(Settings(tagger_model_dir=str(tagger_model), log_requests=False))
    with TestClient(app) as c:
        yield json_bodies(c)


def _jpeg(size: tuple[int, int] = (120, 160), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny compressed body."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    idat = zlib.compress(row * 4)  # only a few rows: a decoder would fail long after allocating
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _check_answer(body: dict[str, object]) -> None:
    cats = body["categories"]
    assert isinstance(cats, list) and len(cats) == 2
    assert cats[0]["category"] != cats[1]["category"]
    assert {c["category"] for c in cats} <= set(CATEGORIES)
    assert cats[0]["probability"] >= cats[1]["probability"]
    tags = body["tags"]
    assert isinstance(tags, dict) and set(tags) == set(TAGS)
    for v in tags.values():
        assert 0.0 <= v["probability"] <= 1.0
        assert v["present"] == (v["probability"] >= v["threshold"])
    assert isinstance(body["model_version"], str) and len(body["model_version"]) == 12


def test_raw_body(client: TestClient) -> None:
    r = client.post("/tag", content=_jpeg(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    _check_answer(r.json())


def test_multipart_file(client: TestClient) -> None:
    r = client.post("/tag", files={"file": ("item.jpg", _jpeg(seed=1), "image/jpeg")})
    assert r.status_code == 200, r.text
    _check_answer(r.json())


def test_same_image_same_answer_either_way(client: TestClient) -> None:
    data = _jpeg(seed=2)
    a = client.post("/tag", content=data).json()
    b = client.post("/tag", files={"photo": ("x.jpg", data, "image/jpeg")}).json()
    assert a.pop("answer_id") != b.pop("answer_id")  # every answer its own, server-made id
    assert a == b


def test_png_with_alpha_is_accepted(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 80), (200, 30, 30, 128)).save(buf, format="PNG")
    assert client.post("/tag", content=buf.getvalue()).status_code == 200


def test_non_image_is_415(client: TestClient) -> None:
    r = client.post(
        "/tag", content=b"%PDF-1.4 definitely not a photo", headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"


def test_body_over_10mb_is_413(client: TestClient) -> None:
    r = client.post("/tag", content=b"\xff" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


def test_streamed_body_over_10mb_without_length_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(12):
            yield b"\x00" * (1024 * 1024)

    r = client.post("/tag", content=chunks())
    assert r.status_code == 413


def test_decompression_bomb_over_40_megapixels_is_413(client: TestClient) -> None:
    bomb = _png_bomb(8000, 6000)  # 48 MP declared, a few hundred bytes on the wire
    assert len(bomb) < 10_000
    r = client.post("/tag", content=bomb)
    assert r.status_code == 413
    assert r.json()["error"] == "image_too_large"


def test_truncated_image_is_422(client: TestClient) -> None:
    data = _jpeg((300, 400))
    r = client.post("/tag", content=data[: len(data) // 3])
    assert r.status_code == 422
    assert r.json()["error"] == "corrupt_image"


def test_empty_body_and_multipart_without_file_are_400(client: TestClient) -> None:
    assert client.post("/tag", content=b"").status_code == 400
    r = client.post("/tag", data={"note": "no file here"}, files={"other": ("", b"", "text/plain")})
    assert r.status_code == 400


def test_get_is_405_in_json(client: TestClient) -> None:
    r = client.get("/tag")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert client.get("/nowhere").json()["error"] == "not_found"


def test_platform_server_mounts_tag_with_its_own_10mb_limit(tagger_model: Path) -> None:
    """Through the real server factory: a 2+ MB photo passes the 1 MiB server-wide default."""
    from mlsys.compose.app import build_app
    from mlsys.platform.settings import Settings

    app = build_app(Settings(tagger_model_dir=str(tagger_model), log_requests=False))
    photo = _jpeg((1600, 1600), seed=3)
    assert len(photo) > Settings().max_body_bytes
    with TestClient(app) as c:
        assert c.get("/readyz").json()["checks"]["tagger.model"] == "ok"
        r = c.post("/tag", content=photo)
        assert r.status_code == 200, r.text
        _check_answer(r.json())
        assert c.post("/tag", content=b"\x00" * (MAX_BODY_BYTES + 1)).status_code == 413
