"""The factored step is exact: same gradients as autograd, same parameters after N Adam steps."""

from __future__ import annotations

import pytest
import torch

from mlsys.recommender.model import RankNet
from mlsys.recommender.training.fastgrad import FactoredStep


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs shaped like the real ones (cluster centres ~N(0, 2^2)) and 0/1 clicks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 40, generator=g) * 2.0
    y = (torch.rand(n, generator=g) < 0.46).float()
    return x, y


def _autograd_grads(model: RankNet, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = torch.nn.BCEWithLogitsLoss()(model(x), y)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [1, 37, 1024])
def test_gradients_equal_autograd(n: int) -> None:
    torch.manual_seed(0)
    reference = RankNet()
    fast = RankNet()
    fast.load_state_dict(reference.state_dict())
    x, y = _batch(n, seed=n)
    expected = _autograd_grads(reference, x, y)
    step = FactoredStep(fast, max_batch=1024)
    logits = torch.empty(n)
    step.step(x, 2 * y - 1, logits)
    torch.testing.assert_close(logits, reference(x).detach(), rtol=1e-5, atol=1e-6)
    for (name, p), want in zip(fast.named_parameters(), expected, strict=True):
        assert p.grad is not None
        rel = float((p.grad - want).norm() / want.norm().clamp_min(1e-30))
        assert rel <= 1e-5, f"{name}: relative error {rel:.2e}"


def test_forward_matches_module() -> None:
    torch.manual_seed(1)
    model = RankNet()
    x, _ = _batch(500, seed=3)
    out = torch.empty(500)
    FactoredStep(model, 512).forward(x, out)
    torch.testing.assert_close(out, model(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lr", [1e-8, 1e-3])
def test_n_adam_steps_match_plain_autograd_loop(lr: float) -> None:
    """Our loop (factored grads + fused Adam) vs the kit's (autograd + default Adam).

    At the task's lr 1e-8 the updates are ~1 float32 ulp of the weights, so the parameters
    would match even with wrong gradients; the lr 1e-3 case moves them far enough for a
    wrong gradient or a wrong optimizer to show.
    """
    torch.manual_seed(0)
    plain = RankNet()
    ours = RankNet()
    ours.load_state_dict(plain.state_dict())
    initial = {k: v.clone() for k, v in plain.state_dict().items()}
    opt_plain = torch.optim.Adam(plain.parameters(), lr=lr)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=lr, fused=True)
    step = FactoredStep(ours, max_batch=256)
    logits = torch.empty(256)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for i in range(30):
        x, y = _batch(256 if i % 7 else 100, seed=100 + i)
        opt_plain.zero_grad()
        loss_fn(plain(x), y).backward()
        opt_plain.step()
        step.step(x, 2 * y - 1, logits[: len(x)])
        opt_ours.step()
    for key, want in plain.state_dict().items():
        got = ours.state_dict()[key]
        moved = (want - initial[key]).abs().max()
        assert moved > 0, f"{key} did not move"
        # Adam divides by sqrt(v): where a gradient is ~0 its float32 rounding can move the
        # update by a fraction of lr, so the absolute tolerance is a small fraction of 30*lr.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=30 * lr * 1e-3)
