"""The click-probability model, fixed by the task: do not change its architecture.

The first two layers have no activation between them; training and serving exploit that
(see `training/fastgrad.py` and `ranking.py`) but the parameters stay exactly these
`nn.Linear` modules so artifacts remain interchangeable with the kit's `torch.jit.load`
consumers.
"""

from __future__ import annotations

import torch
from torch import nn

USER_FEATURES = tuple(f"f{i:02d}" for i in range(30))
RESTAURANT_FEATURES = tuple(f"f{i:02d}" for i in range(10))
# Model input order: the user's f00..f29, then the restaurant's f00..f09, raw (no scaling).
INPUT_FEATURES = tuple(f"user.{c}" for c in USER_FEATURES) + tuple(
    f"restaurant.{c}" for c in RESTAURANT_FEATURES
)
NUM_INPUTS = len(INPUT_FEATURES)


class RankNet(nn.Module):
    """Sequential(Linear(40, 256), Linear(256, 128), ReLU(), Linear(128, 1)); returns logits."""

    def __init__(self, num_features: int = NUM_INPUTS) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(num_features, 256),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # squeeze(-1), not squeeze(): a batch of one stays a 1-element vector.
        out: torch.Tensor = self.model(x)
        return out.squeeze(-1)
