"""Grouped-query attention through scaled_dot_product_attention, with a preallocated KV cache."""
import torch
import torch.nn.functional as F
from torch import nn

from model.layers import apply_rotary


class KVCache:
    """Keys and values of every layer for a batch, preallocated to max_len positions."""

    def __init__(self, n_layers, batch_size, n_kv_heads, max_len, head_dim, device=None, dtype=torch.float32):
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len, self.length = max_len, 0

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {new_tokens} tokens exceed its {self.max_len} positions")


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, dropout=0.0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        # q, k and v projections as one matrix (rows: q heads, then k heads, then v heads): one
        # matmul instead of three, which matters most when decoding one token at a time.
        self.wqkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.split = (n_heads * self.head_dim, n_kv_heads * self.head_dim, n_kv_heads * self.head_dim)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None, layer=0):
        """mask: bool [B, 1, T, S] (True = may attend) or None; is_causal only without mask."""
        b, t, _ = x.shape
        qkv = self.wqkv(x)
        # Rotate q and k heads together (one set of ops), then move heads before time.
        qk = apply_rotary(qkv[..., :self.split[0] + self.split[1]].unflatten(-1, (-1, self.head_dim)), cos, sin)
        q, k = qk.transpose(1, 2).split((self.n_heads, self.n_kv_heads), dim=1)
        v = qkv[..., self.split[0] + self.split[1]:].view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            end = cache.length + t
            cache.k[layer, :, :, cache.length:end] = k
            cache.v[layer, :, :, cache.length:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
        if self.n_kv_heads != self.n_heads:  # each K/V head serves a group of query heads
            groups = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, -1)))
