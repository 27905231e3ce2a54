"""How the tagger trains (`TrainConfig`, plain values) and the files it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlsys.tagger.preprocess import PreprocessConfig

MODEL_JSON = "tagger.json"


TORCH_FILE = "tagger.pt"


FP32_FILE = "tagger_fp32.onnx"


INT8_FILE = "tagger_int8.onnx"


@dataclass
class TrainConfig:
    """The default is what `mlsys train tagger` runs; see docs/tagger-report.md for why."""

    size: int = 160
    tune_from_block: int = 8  # blocks [0, 8) frozen and cached; [8, 16) + head trained
    views: int = 3  # cached versions of each training image: 1 clean + 2 augmented
    epochs: int = 6
    patience: int = 3
    batch_size: int = 64
    lr: float = 2e-3  # heads
    backbone_lr: float = 5e-4  # the fine-tuned blocks
    weight_decay: float = 1e-4
    drop_path: float = 0.2  # stochastic depth of the last block; earlier tuned blocks less
    val_fraction: float = 0.1
    label_smoothing: float = 0.05
    calibration_images: int = 256
    int8_tolerance: float = 0.01  # deploy INT8 if it changes at most this share of val top-1s
    seed: int = 0
    threads: int = 2
    max_images: int | None = None  # train on a subset (tests, quick runs)
    time_budget_s: float = 26 * 60.0  # stop adding epochs when the next one would overrun
    mean: tuple[float, float, float] = (127.0 / 255, 127.0 / 255, 127.0 / 255)
    std: tuple[float, float, float] = (128.0 / 255, 128.0 / 255, 128.0 / 255)
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.size, mean=self.mean, std=self.std)


# A few seconds end to end on a few dozen images: for tests and smoke runs.
QUICK = TrainConfig(
    size=64, tune_from_block=14, views=2, epochs=2, patience=1, batch_size=16,
    calibration_images=16, val_fraction=0.25, time_budget_s=600.0,
)  # fmt: skip
