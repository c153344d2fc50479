"""Small swappable pieces of the Transformer: norm, positions, feed-forward.

Each kind of piece has a registry (NORMS, POSITIONS, FEED_FORWARDS): a name, as written in
LMConfig, mapped to a class whose from_config(cfg) builds it. The model looks pieces up by name
when it is built, never in forward; a new piece is a new class, one registry entry and its test."""
import torch
import torch.nn.functional as F
from torch import nn


class _RMSNormFunction(torch.autograd.Function):
    """fp32 RMSNorm with a hand-written backward: about a quarter faster than autograd through
    F.rms_norm's decomposition on CPU, which keeps several full-size intermediates."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = mean_square.add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return x * rstd * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        grad_normed = grad * weight
        normed = x * rstd
        # d/dx of x * rstd: rstd * (g - normed * mean(g * normed)) per row.
        dot = torch.linalg.vecdot(grad_normed, normed).unsqueeze(-1).div_(x.shape[-1])
        grad_x = torch.addcmul(grad_normed, normed, dot, value=-1.0).mul_(rstd)
        grad_weight = (grad * normed).flatten(0, -2).sum(0)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    @classmethod
    def from_config(cls, cfg) -> "RMSNorm":
        return cls(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _RMSNormFunction.apply(x, self.weight, self.eps)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # GPUs get a fused kernel
        # Low-precision activations: normalise in fp32 (a bf16 mean of squares drifts).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).type_as(x)


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm (weight and bias; state-dict keys weight, bias), built from a config."""

    @classmethod
    def from_config(cls, cfg) -> "LayerNorm":
        return cls(cfg.dim, eps=cfg.norm_eps)


NORMS = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in the split-halves convention (channel i of a head pairs with
    channel i + head_dim/2), the layout Llama checkpoints use.

    A positions piece gives the model tables(positions, dtype, checked), handed to every
    attention layer as (cos, sin), says with `rotary` whether attention rotates q and k, and with
    `additive` whether the model adds the piece's own embedding of the positions to its input."""

    rotary = True
    additive = False

    @classmethod
    def from_config(cls, cfg) -> "RotaryEmbedding":
        return cls(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        # Full-width tables, sin with the rotation's sign built in: rotating is then two contiguous
        # element-wise passes (x * cos + swap_halves(x) * sin); per-half ops on strided views are
        # several times slower on CPU.
        signed_sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", signed_sin.float(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype=None, checked: bool = False):
        """cos/sin for positions [B, T] (or [T]), shaped to broadcast over the heads of a
        [B, T, H, D] tensor: [B, T, 1, D] (or [T, 1, D]).
        checked: the caller already knows every position is below max_seq_len (saves a sync)."""
        if not checked and int(positions.max()) >= self.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_seq_len {self.max_seq_len}")
        cos, sin = self.cos[positions], self.sin[positions]
        if dtype is not None and dtype != cos.dtype:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos.unsqueeze(-2), sin.unsqueeze(-2)


class NoPositions(nn.Module):
    """No position encoding at all: attention sees q and k as projected (order comes only from a
    causal mask). Positions are still bounded by max_seq_len, as with every positions piece."""

    rotary = False
    additive = False

    def __init__(self, max_seq_len: int):
        super().__init__()
        self.max_seq_len = max_seq_len

    @classmethod
    def from_config(cls, cfg) -> "NoPositions":
        return cls(cfg.max_seq_len)

    def tables(self, positions: torch.Tensor, dtype=None, checked: bool = False):
        if not checked and int(positions.max()) >= self.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_seq_len {self.max_seq_len}")
        return None, None


class LearnedPositions(nn.Embedding):
    """Learned absolute positions (BERT, GPT-2): a [max_seq_len, dim] table whose row for each
    token's position is added to its embedding at the input (`additive`); attention then sees q
    and k as projected. Its state-dict key is positions.weight. Positions come from the model, so
    left-padded batches and KV-cache steps index the table exactly as rope indexes its tables."""

    rotary = False
    additive = True

    def __init__(self, max_seq_len: int, dim: int):
        super().__init__(max_seq_len, dim)
        self.max_seq_len = max_seq_len

    @classmethod
    def from_config(cls, cfg) -> "LearnedPositions":
        return cls(cfg.max_seq_len, cfg.dim)

    def tables(self, positions: torch.Tensor, dtype=None, checked: bool = False):
        if not checked and int(positions.max()) >= self.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_seq_len {self.max_seq_len}")
        return None, None


POSITIONS = {"rope": RotaryEmbedding, "none": NoPositions, "learned": LearnedPositions}


def rotate_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor,
                inverse: bool = False) -> torch.Tensor:
    """Rotate each (x[i], x[i + D/2]) pair of x [..., D] by its angle (by minus it when inverse,
    which is also the rotation's gradient), writing into out. sin is the signed table."""
    if cos.dtype != x.dtype:  # autocast: q/k arrive in bf16/fp16
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    swapped = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)  # [x2, x1]
    torch.mul(x, cos, out=out)
    return out.addcmul_(swapped, sin, value=-1.0 if inverse else 1.0)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated in the split-halves convention, as a new (differentiable) tensor."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.addcmul(x * cos, x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2), sin)


class _SiluGate(torch.autograd.Function):
    """silu(gate) * up from one [..., 2H] tensor (gate half, then up half). Its backward writes
    both halves' gradients into one tensor; autograd through split() would build them separately
    and concatenate, an extra copy of the largest activation of the block."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        ctx.save_for_backward(gate_up, silu_gate)
        return silu_gate * up

    @staticmethod
    def backward(ctx, grad):
        gate_up, silu_gate = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_in = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_in.chunk(2, dim=-1)
        torch.mul(grad, silu_gate, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_in


class SwiGLU(nn.Module):
    """w_down(silu(gate) * up): three matrices, gate and up fused into one (Llama's MLP)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.w_gate_up = nn.Linear(dim, 2 * hidden_dim, bias=bias)  # gate rows, then up rows: one matmul
        self.w_gate_up.fused_rows = (hidden_dim, hidden_dim)  # two matrices, for Muon (see Attention)
        self.w_down = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @staticmethod
    def default_hidden_dim(dim: int, multiple_of: int) -> int:
        """~8/3 * dim (the same parameters as a 4 * dim two-matrix MLP), rounded up to multiple_of."""
        hidden = int(2 * (4 * dim) / 3)
        return multiple_of * ((hidden + multiple_of - 1) // multiple_of)

    @classmethod
    def from_config(cls, cfg) -> "SwiGLU":
        return cls(cfg.dim, cfg.ffn_dim, cfg.dropout, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.w_gate_up(x)
        if torch.is_grad_enabled() and gate_up.requires_grad:
            hidden = _SiluGate.apply(gate_up)
        else:  # inference: no autograd bookkeeping
            gate, up = gate_up.chunk(2, dim=-1)
            hidden = F.silu(gate) * up
        return self.dropout(self.w_down(hidden))


class GeluMLP(nn.Module):
    """w_down(gelu(w_up(x))): two matrices, exact (erf) GELU: BERT's MLP."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.w_up = nn.Linear(dim, hidden_dim, bias=bias)
        self.w_down = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @staticmethod
    def default_hidden_dim(dim: int, multiple_of: int) -> int:
        return 4 * dim

    @classmethod
    def from_config(cls, cfg) -> "GeluMLP":
        return cls(cfg.dim, cfg.ffn_dim, cfg.dropout, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w_down(F.gelu(self.w_up(x))))


class GeluTanhMLP(GeluMLP):
    """GeluMLP with the tanh approximation of GELU (transformers' "gelu_new"): GPT-2's MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w_down(F.gelu(self.w_up(x), approximate="tanh")))


class ReLU2MLP(GeluMLP):
    """w_down(relu(w_up(x))^2): the squared-ReLU MLP of the NanoGPT speedrun and nanochat, two
    matrices at 4 * dim by default (relu(x)^2 is cheaper than GELU and trained faster there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w_down(F.relu(self.w_up(x)).square()))


FEED_FORWARDS = {"swiglu": SwiGLU, "gelu": GeluMLP, "gelu_tanh": GeluTanhMLP, "relu2": ReLU2MLP}
