"""Muon for the hidden weight matrices, AdamW for everything else, in one optimizer.

Muon (Jordan et al. 2024) keeps a Nesterov momentum of the gradient and replaces it by its nearest
semi-orthogonal matrix (a quintic Newton-Schulz iteration) before the step. The update rule is
torch.optim.Muon's: buf <- lerp(buf, g, 1 - momentum), u <- lerp(g, buf, momentum), O <- NS(u),
W <- W * (1 - lr * weight_decay) - lr * sqrt(max(1, rows / cols)) * O. The sqrt(max(1, rows/cols))
factor ("original" in torch) gives every shape the same update RMS per column; with it the usual
Muon rate is 0.02.

Why not torch.optim.Muon itself: it runs the iteration in bfloat16, which on a CPU without fast
bf16 is 10-100x slower than float32, and it cannot orthogonalise an FSDP shard (the iteration needs
the whole matrix). So here the iteration is float32 on a CPU (our own small quintic iteration) and
torch's own bfloat16 one on a GPU; under FSDP each rank gathers the whole matrix, orthogonalises it
and keeps its shard of the result.

One optimizer (not two side by side) so that the loop's scheduler, clipping, loss scaler, EMA and
checkpoints see one object: each parameter group says its kind ("muon" or "adamw")."""
import math

import torch

try:  # torch's bfloat16 iteration, used on GPUs (a private function: fall back to ours if it moves)
    from torch.optim._muon import _zeropower_via_newtonschulz as _torch_newton_schulz
except ImportError:  # pragma: no cover
    _torch_newton_schulz = None

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's (a, b, c), as torch.optim.Muon
NS_STEPS = 5
NS_EPS = 1e-7


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32,
                  eps: float = NS_EPS) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (singular values ~0.7-1.2),
    computed in `dtype`. X <- a X + (b A + c A^2) X with A = X X^T, X the wide orientation of g
    scaled to spectral norm <= 1 by its Frobenius norm."""
    if g.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    tall = g.size(0) > g.size(1)
    x = g.to(dtype)
    if tall:
        x = x.mT
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def orthogonalise(u: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """float32 on a CPU, bfloat16 (torch's own iteration) elsewhere; returned in u's dtype."""
    if u.device.type == "cpu" or _torch_newton_schulz is None:
        out = newton_schulz(u, steps, torch.float32 if u.device.type == "cpu" else torch.bfloat16)
    else:
        out = _torch_newton_schulz(u, NS_COEFFICIENTS, steps, NS_EPS)
    return out.to(u.dtype)


def shape_scale(shape) -> float:
    """Keller Jordan's (torch's "original") factor: an update of the same RMS per output column
    whatever the aspect ratio."""
    rows, cols = shape[0], shape[1]
    return math.sqrt(max(1.0, rows / cols))


def newton_schulz_flops(shape, steps: int = NS_STEPS) -> float:
    """Multiply-adds x 2 of the iteration on one matrix: per step X X^T (2 m^2 n), A A (2 m^3) and
    (.) X (2 m^2 n), m the smaller side."""
    m, n = sorted(shape[:2])
    return steps * (4 * m * m * n + 2 * m ** 3)


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """full as p is held: p's own shard of it for an FSDP DTensor (each rank computed the same
    whole matrix, so each cuts its piece locally: no communication), else full itself."""
    if not hasattr(p, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)


class MuonAdamW(torch.optim.Optimizer):
    """Groups of kind "muon" (2-D parameters: lr, weight_decay, momentum, nesterov, ns_steps) and
    "adamw" (lr, weight_decay, betas, eps). A group's "lr_scale" is its rate relative to the run's
    learning rate, for the scheduler to keep."""

    def __init__(self, groups, *, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = NS_STEPS, fused_rows=None):
        """fused_rows: {parameter: row counts} for parameters that stack several matrices (a fused
        q/k/v projection): Muon orthogonalises each block of rows as its own matrix."""
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, momentum=momentum,
                        nesterov=nesterov, ns_steps=ns_steps, kind="adamw", lr_scale=1.0)
        super().__init__(groups, defaults)
        self.fused_rows = dict(fused_rows or {})
        for group in self.param_groups:
            if group["kind"] not in ("muon", "adamw"):
                raise ValueError(f"unknown parameter group kind {group['kind']!r}")
            if group["kind"] == "muon" and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only")

    def muon_shapes(self) -> list:
        """The shapes Newton-Schulz runs on: a fused parameter's matrices one by one."""
        shapes = []
        for p in (p for g in self.param_groups if g["kind"] == "muon" for p in g["params"]):
            rows = self.fused_rows.get(p)
            shapes += [(r, p.shape[1]) for r in rows] if rows else [tuple(p.shape)]
        return shapes

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["kind"] == "muon":
                self._muon(group, params)
            else:
                self._adamw(group, params)
        return loss

    def _muon(self, group, params) -> None:
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        for p in params:
            g = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - momentum)
            u = g.lerp(buf, momentum) if group["nesterov"] else buf
            update = _like(self._orthogonal_update(_whole(u), self.fused_rows.get(p), group["ns_steps"]), p)
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr)

    @staticmethod
    def _orthogonal_update(u: torch.Tensor, rows, ns_steps: int) -> torch.Tensor:
        """Each matrix a fused parameter holds (q, k, v; gate, up) orthogonalised and scaled on its own."""
        parts = u.split(list(rows)) if rows else (u,)
        return torch.cat([orthogonalise(part, ns_steps) * shape_scale(part.shape) for part in parts])

    def _adamw(self, group, params) -> None:
        from torch.optim.adam import adam

        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adam(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, decoupled_weight_decay=True,
             amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
             eps=group["eps"], maximize=False)
