"""Grouped-query attention through scaled_dot_product_attention, with a preallocated KV cache."""
import torch
import torch.nn.functional as F
from torch import nn

from model.layers import RMSNorm, apply_rotary, rotate_into


class KVCache:
    """Keys and values of every layer for a batch, preallocated to max_len positions."""

    def __init__(self, n_layers, batch_size, n_kv_heads, max_len, head_dim, device=None, dtype=torch.float32):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        # A tensor per layer, not one stacked tensor: a compiled step then writes each layer's slot in
        # place, where a write into a view of one shared tensor made it copy the whole cache per step.
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len, self.length = max_len, 0

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {new_tokens} tokens exceed its {self.max_len} positions")

    def update(self, layer, k, v):
        """Write k, v [B, Hkv, T, D] after the `length` cached positions; the keys and values to
        attend to. The model advances `length` once all layers have written."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def at(self, slot: torch.Tensor, keys: int) -> "CacheSlot":
        """This cache written at the position held by the tensor `slot` ([1]), its first `keys`
        positions attended to, for decode steps."""
        return CacheSlot(self, slot, keys)


class CacheSlot:
    """A KVCache seen by one decoding step whose token goes to position `slot`, a tensor rather than
    a Python int: no host state changes inside a step, so a compiled step is traced once (with the
    number of keys a symbolic size). Attention reads the first `keys` positions, masked by the
    caller."""

    def __init__(self, cache: KVCache, slot: torch.Tensor, keys: int):
        self.cache, self.slot, self.keys = cache, slot, keys

    def update(self, layer, k, v):
        k_all, v_all = self.cache.k[layer], self.cache.v[layer]
        k_all.index_copy_(2, self.slot, k)
        v_all.index_copy_(2, self.slot, v)
        return k_all[:, :, :self.keys], v_all[:, :, :self.keys]


def _rotary_heads(qkv, cos, sin, n_heads, n_kv_heads, head_dim):
    """Fused q|k|v projection output [B, T, (H + 2 Hkv) * D] -> rotated q [B, H, T, D], rotated
    k [B, Hkv, T, D] and v [B, Hkv, T, D] (head-major views, as SDPA wants them)."""
    b, t, _ = qkv.shape
    heads = qkv.view(b, t, -1, head_dim)
    n_qk = n_heads + n_kv_heads
    qk = rotate_into(heads[:, :, :n_qk], cos, sin, qkv.new_empty(b, t, n_qk, head_dim))
    q, k = qk.transpose(1, 2).split((n_heads, n_kv_heads), dim=1)
    return q, k, heads[:, :, n_qk:].transpose(1, 2)


def _plain_heads(qkv, cos, sin, n_heads, n_kv_heads, head_dim):
    """_rotary_heads for a model without rotary positions: q, k and v as projected (cos and sin
    are None)."""
    b, t, _ = qkv.shape
    return qkv.view(b, t, -1, head_dim).transpose(1, 2).split((n_heads, n_kv_heads, n_kv_heads), dim=1)


class _RotaryHeads(torch.autograd.Function):
    """_rotary_heads with a backward that writes the q, k and v gradients straight into one
    [B, T, (H + 2 Hkv) * D] tensor. Autograd through the slices would zero-fill and add a
    full-size gradient per slice, then concatenate: three extra passes over the tensor."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_heads, n_kv_heads, head_dim):
        ctx.save_for_backward(cos, sin)
        ctx.heads = (n_heads, n_kv_heads)
        return _rotary_heads(qkv, cos, sin, n_heads, n_kv_heads, head_dim)

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        cos, sin = ctx.saved_tensors
        n_q, n_kv = ctx.heads
        b, _, t, d = grad_q.shape
        grad = grad_q.new_empty(b, t, n_q + 2 * n_kv, d)
        # The rotation is orthogonal: its gradient is the inverse rotation of the output gradient.
        rotate_into(grad_q.transpose(1, 2), cos, sin, grad[:, :, :n_q], inverse=True)
        rotate_into(grad_k.transpose(1, 2), cos, sin, grad[:, :, n_q:n_q + n_kv], inverse=True)
        grad[:, :, n_q + n_kv:] = grad_v.transpose(1, 2)
        return grad.flatten(2), None, None, None, None, None


def _one_query_attention(q, k, v, mask, n_kv_heads):
    """Attention of a single query per row, q [B, H, 1, D], over k, v [B, Hkv, S, D] (mask: bool,
    broadcasting to [B, 1, 1, S], or None): a decoding step. SDPA's CPU kernel is blocked for long
    queries and spends about as long on one query as the block's matmuls; here it is two small
    matmuls and a softmax. Query heads are grouped onto their K/V head by a view, never copying
    the cache as repeat_interleave would."""
    b, h, _, d = q.shape
    q = q.reshape(b, n_kv_heads, h // n_kv_heads, d) * d ** -0.5   # [B, Hkv, group, D]
    scores = q @ k.transpose(-1, -2)                                 # [B, Hkv, group, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).reshape(b, h, 1, d)


def _normed_heads(qkv, q_norm, k_norm, cos, sin, n_heads, n_kv_heads, head_dim):
    """QK-norm (Qwen3, the NanoGPT speedrun): each head's q and k RMS-normalised over its channels,
    one learnable weight per channel shared by the heads, then rotated (cos None: not rotated).
    Plain autograd: the norm sits between the projection and the rotation, so _RotaryHeads' fused
    backward does not apply."""
    b, t, _ = qkv.shape
    heads = qkv.view(b, t, -1, head_dim)
    q, k = q_norm(heads[:, :, :n_heads]), k_norm(heads[:, :, n_heads:n_heads + n_kv_heads])
    if cos is not None:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), heads[:, :, n_heads + n_kv_heads:].transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, dropout=0.0, bias=False, rotary=True, qkv_bias=None,
                 qk_norm=False, norm_eps=1e-6):
        """bias: a bias on the output projection, and on q/k/v too unless qkv_bias says otherwise
        (Qwen2 has q/k/v biases and none on the output). rotary: q and k are rotated by the
        (cos, sin) tables forward receives; without it they are used as projected. qk_norm: q and k
        RMS-normalised per head (weights q_norm.weight, k_norm.weight: [head_dim]) before rotary."""
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        # q, k and v projections as one matrix (rows: q heads, then k heads, then v heads): one
        # matmul instead of three, which matters most when decoding one token at a time.
        self.wqkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * self.head_dim,
                              bias=bias if qkv_bias is None else qkv_bias)
        # The rows of each projection it holds, for optimizers that treat each matrix as a whole (Muon).
        self.wqkv.fused_rows = (n_heads * self.head_dim, n_kv_heads * self.head_dim, n_kv_heads * self.head_dim)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=bias)
        # How the fused projection becomes heads (with autograd, without), chosen once here so that
        # forward does not test the choice again.
        self._heads_grad, self._heads = (_RotaryHeads.apply, _rotary_heads) if rotary else (_plain_heads, _plain_heads)
        self.rotary = rotary
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None, layer=0):
        """mask: bool [B, 1, T, S] (True = may attend) or None; is_causal only without mask."""
        b, t, _ = x.shape
        qkv = self.wqkv(x)
        heads = (qkv, cos, sin, self.n_heads, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k, v = _normed_heads(qkv, self.q_norm, self.k_norm, cos if self.rotary else None, sin,
                                    *heads[3:])
        elif torch.is_grad_enabled() and qkv.requires_grad:
            q, k, v = self._heads_grad(*heads)
        else:  # inference: no autograd bookkeeping
            q, k, v = self._heads(*heads)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if t == 1 and cache is not None and not self.training:
            return self.resid_dropout(self.wo(_one_query_attention(q, k, v, mask, self.n_kv_heads).reshape(b, 1, -1)))
        if self.n_kv_heads != self.n_heads:  # each K/V head serves a group of query heads
            groups = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, -1)))
