"""The hand-written backward passes of the model's pieces (RMSNorm, rotary q/k/v split, SwiGLU
gate) match autograd through the plain formulas, and the rotary convention is Llama's."""
import torch
import torch.nn.functional as F

from model.attention import _RotaryHeads
from model.layers import RotaryEmbedding, SwiGLU, _RMSNormFunction, _SiluGate, apply_rotary


def _grads(fn, *inputs):
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(1)
    torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
    return [o.detach() for o in outs], [i.grad.clone() for i in inputs]


def _compare(fused, reference, *shapes):
    torch.manual_seed(0)
    inputs = [torch.randn(s, dtype=torch.float64) for s in shapes]
    a = _grads(fused, *[i.clone().requires_grad_() for i in inputs])
    b = _grads(reference, *[i.clone().requires_grad_() for i in inputs])
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert x.shape == y.shape and (x - y).abs().max() < 1e-10


def test_rms_norm_backward_matches_autograd():
    eps = 1e-5
    reference = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    _compare(lambda x, w: _RMSNormFunction.apply(x, w, eps), reference, (3, 7, 16), (16,))


def test_silu_gate_backward_matches_autograd():
    def reference(gate_up):
        gate, up = gate_up.split(12, dim=-1)
        return F.silu(gate) * up
    _compare(_SiluGate.apply, reference, (2, 5, 24))


def test_rotary_heads_backward_matches_autograd():
    n_q, n_kv, d, t = 4, 2, 8, 6
    rope = RotaryEmbedding(d, 16)
    cos, sin = (tab.double() for tab in rope.tables(torch.arange(t)))

    def reference(qkv):
        heads = qkv.view(2, t, n_q + 2 * n_kv, d)
        q, k, v = heads.split((n_q, n_kv, n_kv), dim=2)
        return apply_rotary(q, cos, sin).transpose(1, 2), apply_rotary(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
    _compare(lambda qkv: _RotaryHeads.apply(qkv, cos, sin, n_q, n_kv, d), reference, (2, t, (n_q + 2 * n_kv) * d))


def test_rotary_is_llama_rotate_half_convention():
    torch.manual_seed(0)
    d, t = 8, 5
    x = torch.randn(1, t, 1, d, dtype=torch.float64)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
    rotate_half = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    expected = x * cos + rotate_half * sin
    ours = apply_rotary(x.float(), *RotaryEmbedding(d, 16).tables(torch.arange(t)))
    assert (ours.double() - expected).abs().max() < 1e-6


def test_swiglu_inference_path_equals_training_path():
    torch.manual_seed(0)
    mlp = SwiGLU(16, 24)
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        plain = mlp(x)
    assert torch.equal(mlp(x).detach(), plain)
