"""RankNet's training step without autograd: exact gradients through the 128x40 product W2·W1.

RankNet is `Linear(40, 256) -> Linear(256, 128) -> ReLU -> Linear(128, 1)`. The first two
layers have no activation between them, so for a batch x (B x 40)

    h2 = (x W1^T + b1) W2^T + b2 = x M^T + c,   M = W2 W1 (128 x 40),  c = W2 b1 + b2.

Autograd materialises the 256-wide activation h1 and pushes B x 256 gradients through it; that
is most of the FLOPs and most of the kernels of a step. Here, with g2 = dL/dh2 (B x 128, after
the ReLU mask and W3), the same gradients follow from the 128 x 40 matrix G = g2^T x and the
column sums s = g2^T 1:

    dW2 = g2^T h1 = G W1^T + s b1^T      dW1 = W2^T G      db1 = W2^T s      db2 = s

These are the exact gradients (the same sums in a different association order), so they match
autograd to float32 rounding. They are written into the `.grad` of the real `nn.Parameter`s,
and the real `torch.optim.Adam` applies them: the model, its state dict and the optimizer are
exactly the task's. Every intermediate lives in a buffer allocated once, and each op writes
with `out=`, so a step is ~20 kernels and no allocations; what is left is per-op dispatch
overhead, which this keeps to the minimum the maths allows.
"""

from __future__ import annotations

import torch

from mlsys.recommender.model import NUM_INPUTS, RankNet

HIDDEN1 = 256
HIDDEN2 = 128


class FactoredStep:
    """Forward + exact backward of RankNet for one batch, into preallocated `.grad` buffers.

    `step(x, sign)` takes the batch and `sign = 2*click - 1` (so the loss and the gradient of
    BCE-with-logits are both functions of the margin m = sign * z) and leaves the gradients of
    the *mean* loss in every parameter's `.grad`, like `loss.backward()` would. The logits are
    written to `logits_out` so the caller computes loss and accuracy over many steps at once.
    """

    def __init__(self, model: RankNet, max_batch: int) -> None:
        lin1, lin2, _, lin3 = model.model
        assert isinstance(lin1, torch.nn.Linear) and isinstance(lin2, torch.nn.Linear)
        assert isinstance(lin3, torch.nn.Linear)
        self.w1, self.b1 = lin1.weight, lin1.bias
        self.w2, self.b2 = lin2.weight, lin2.bias
        self.w3, self.b3 = lin3.weight, lin3.bias
        self.params = [self.w1, self.b1, self.w2, self.b2, self.w3, self.b3]
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.max_batch = max_batch
        f32 = torch.float32
        self.m = torch.empty(HIDDEN2, NUM_INPUTS, dtype=f32)  # W2 W1
        self.c = torch.empty(HIDDEN2, dtype=f32)  # W2 b1 + b2
        self.h = torch.empty(max_batch, HIDDEN2, dtype=f32)  # relu(x M^T + c)
        self.g = torch.empty(max_batch, HIDDEN2, dtype=f32)  # dL/dh2
        self.dz = torch.empty(max_batch, dtype=f32)  # dL/dz
        self.gx = torch.empty(HIDDEN2, NUM_INPUTS, dtype=f32)  # g2^T x
        self.s = torch.empty(HIDDEN2, dtype=f32)  # g2^T 1
        self.ones = torch.ones(max_batch, dtype=f32)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, logits_out: torch.Tensor) -> None:
        """Logits of a batch (no gradient bookkeeping); used by training and evaluation."""
        n = x.shape[0]
        torch.mm(self.w2, self.w1, out=self.m)
        torch.addmv(self.b2, self.w2, self.b1, out=self.c)
        h = self.h[:n]
        torch.addmm(self.c, x, self.m.t(), out=h)
        h.clamp_(min=0.0)
        torch.addmv(self.b3, h, self.w3[0], out=logits_out)

    @torch.no_grad()
    def step(self, x: torch.Tensor, sign: torch.Tensor, logits_out: torch.Tensor) -> None:
        n = x.shape[0]
        self.forward(x, logits_out)
        h, g, dz = self.h[:n], self.g[:n], self.dz[:n]
        # BCE-with-logits of the margin m = sign*z is softplus(-m); d/dz = -sign*sigmoid(-m)/n.
        torch.mul(logits_out, sign, out=dz)
        dz.neg_().sigmoid_().mul_(sign).mul_(-1.0 / n)
        # Last layer: dW3 = dz^T h, db3 = sum(dz).
        torch.mv(h.t(), dz, out=self.w3.grad[0])  # type: ignore[index]
        torch.sum(dz, dim=0, keepdim=True, out=self.b3.grad)
        # g2 = (dz w3^T) masked by ReLU (h > 0 exactly where the pre-activation was > 0);
        # threshold_backward is autograd's own ReLU backward, one kernel, no bool temporary.
        torch.outer(dz, self.w3[0], out=g)
        torch.ops.aten.threshold_backward.grad_input(g, h, 0.0, grad_input=g)
        # The 128x40 sums that replace the 256-wide backward.
        torch.mm(g.t(), x, out=self.gx)
        torch.mv(g.t(), self.ones[:n], out=self.s)
        assert self.w1.grad is not None and self.w2.grad is not None
        assert self.b1.grad is not None and self.b2.grad is not None
        torch.mm(self.gx, self.w1.t(), out=self.w2.grad)
        self.w2.grad.addr_(self.s, self.b1)
        torch.mm(self.w2.t(), self.gx, out=self.w1.grad)
        torch.mv(self.w2.t(), self.s, out=self.b1.grad)
        self.b2.grad.copy_(self.s)
