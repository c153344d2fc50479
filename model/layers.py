"""Small swappable pieces of the Transformer: norm, rotary positions, feed-forward."""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused op
        # Low-precision activations: normalise in fp32 (a bf16 mean of squares drifts).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).type_as(x)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in the split-halves convention (the first half of each head's
    channels pairs with the second half), the layout Llama checkpoints use."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        # sin carries the sign of the rotation: rotate_half(x) * sin == swap_halves(x) * signed_sin
        signed_sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", signed_sin.float(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype=None, checked: bool = False):
        """cos/sin for positions [B, T] (or [T]), shaped to broadcast over heads of a [B, T, H, D]
        tensor: [B, T, 1, D] (or [T, 1, D]).
        checked: the caller already knows every position is below max_seq_len (saves a sync)."""
        if not checked and int(positions.max()) >= self.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_seq_len {self.max_seq_len}")
        cos, sin = self.cos[positions], self.sin[positions]
        if dtype is not None and dtype != cos.dtype:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos.unsqueeze(-2), sin.unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated in the split-halves convention; sin is the signed table from tables()."""
    if cos.dtype != x.dtype:  # autocast: q/k arrive in bf16/fp16
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    swapped = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)  # [x2, x1]
    return torch.addcmul(x * cos, swapped, sin)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.w_gate_up = nn.Linear(dim, 2 * hidden_dim, bias=False)  # gate rows, then up rows: one matmul
        self.w_down = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).split(self.hidden_dim, dim=-1)
        return self.dropout(self.w_down(F.silu(gate) * up))
