"""Block pieces chosen by name (model.norm, model.positions, model.feed_forward, model.bias): each
piece against a plain reference, a non-default model that trains and decodes with its KV cache
exactly as its full forward, bad names refused, and the default block's state-dict keys unchanged."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from model import ConfigError, LMConfig, Transformer
from model.attention import Attention
from model.generation import GenerationConfig, generate_tokens
from model.layers import FEED_FORWARDS, NORMS, POSITIONS, NoPositions, SwiGLU
from model.hf.llama import LLAMA
from tests.helpers.model_checks import assert_loss_and_grads_agree

SMALL = dict(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
OTHER = dict(norm="layernorm", positions="none", feed_forward="gelu", bias=True)  # every piece non-default
# The issue-20 recipe pieces together (every objective), and the untied head a decoder adds to them.
RECIPE = dict(qk_norm=True, feed_forward="relu2", zero_init=True, logit_softcap=5.0)
HEAD = dict(tie_embeddings=False, head_init_std=0.0)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(LMConfig(**{**SMALL, **kw})).eval()


def _randomise(module, seed=1):
    """Random values in every parameter (biases and norm weights start at 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


# ---- each piece against a plain reference ---------------------------------------------------

def test_layernorm_piece_equals_torch_layernorm():
    cfg = LMConfig(**SMALL, norm="layernorm", norm_eps=1e-6)
    ours = _randomise(NORMS["layernorm"].from_config(cfg))
    assert sorted(n for n, _ in ours.named_parameters()) == ["bias", "weight"]
    reference = torch.nn.LayerNorm(64, eps=1e-6)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 64) * 2 + 0.5
    assert torch.allclose(ours(x), reference(x), atol=1e-6)
    by_hand = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(ours(x), by_hand * ours.weight + ours.bias, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_gelu_mlp_equals_plain_gelu_mlp(bias):
    cfg = LMConfig(**SMALL, feed_forward="gelu", bias=bias)
    mlp = _randomise(FEED_FORWARDS["gelu"].from_config(cfg))
    assert cfg.ffn_dim == 4 * 64 and mlp.w_up.weight.shape == (256, 64) and mlp.w_down.weight.shape == (64, 256)
    assert (mlp.w_up.bias is not None) == bias == (mlp.w_down.bias is not None)
    x = torch.randn(2, 5, 64, requires_grad=True)
    w1, w2 = mlp.w_up.weight, mlp.w_down.weight
    b1 = mlp.w_up.bias if bias else torch.zeros(256)
    b2 = mlp.w_down.bias if bias else torch.zeros(64)
    reference = (F.gelu(x @ w1.T + b1) @ w2.T + b2)
    out = mlp(x)
    assert torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    (grad_ours,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(reference, x, g)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-5)


def test_swiglu_with_biases_equals_plain_swiglu():
    mlp = _randomise(SwiGLU(16, 24, bias=True))
    x = torch.randn(3, 5, 16, requires_grad=True)
    gate_w, up_w = mlp.w_gate_up.weight.chunk(2)
    gate_b, up_b = mlp.w_gate_up.bias.chunk(2)
    reference = (F.silu(x @ gate_w.T + gate_b) * (x @ up_w.T + up_b)) @ mlp.w_down.weight.T + mlp.w_down.bias
    out = mlp(x)  # training path: the hand-written _SiluGate backward
    assert torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, *mlp.parameters()], g)
    theirs = torch.autograd.grad(reference, [x, *mlp.parameters()], g)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-4)


def test_default_hidden_sizes():
    assert LMConfig(dim=256).ffn_dim == 704                    # swiglu: 8/3 * 256 rounded up to 32, as before
    assert LMConfig(dim=256, feed_forward="gelu").ffn_dim == 1024
    assert LMConfig(dim=256, feed_forward="gelu", hidden_dim=300).ffn_dim == 300


@pytest.mark.parametrize("bias", [False, True])
def test_attention_without_positions_equals_plain_attention(bias):
    """rotary=False: softmax(q k^T / sqrt(d)) v with q, k, v straight from the projections."""
    attn = _randomise(Attention(32, 4, 2, bias=bias, rotary=False)).eval()
    x = torch.randn(2, 9, 32, requires_grad=True)
    wq, wk, wv = attn.wqkv.weight.split((32, 16, 16))
    bq, bk, bv = attn.wqkv.bias.split((32, 16, 16)) if bias else (0, 0, 0)

    def heads(t, n):
        return t.view(2, 9, n, 8).transpose(1, 2).repeat_interleave(4 // n, dim=1)
    q, k, v = heads(x @ wq.T + bq, 4), heads(x @ wk.T + bk, 2), heads(x @ wv.T + bv, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 32)
    reference = mixed @ attn.wo.weight.T + (attn.wo.bias if bias else 0)
    out = attn(x, None, None, is_causal=True)
    assert torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    assert torch.allclose(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(reference, x, g)[0], atol=1e-5)


def test_no_positions_piece_has_no_tables_and_keeps_the_length_limit():
    pos = POSITIONS["none"].from_config(LMConfig(**SMALL, positions="none"))
    assert isinstance(pos, NoPositions) and not pos.rotary and POSITIONS["rope"].rotary
    assert pos.tables(torch.arange(48)) == (None, None) and list(pos.state_dict()) == []
    with pytest.raises(ValueError, match="position 48 is beyond max_seq_len 48"):
        pos.tables(torch.arange(49))


def test_without_positions_a_masked_lm_cannot_tell_order():
    """Bidirectional attention and no position encoding: permuting the tokens permutes the
    outputs, the same numbers in a new order (with rope they change)."""
    x = torch.randint(5, 211, (2, 20))
    perm = torch.randperm(20)
    plain = make(positions="none", objective="mlm")
    assert torch.allclose(plain(x).logits[:, perm], plain(x[:, perm]).logits, atol=1e-5)
    rope = make(objective="mlm")
    assert not torch.allclose(rope(x).logits[:, perm], rope(x[:, perm]).logits, atol=1e-3)


def test_odd_head_size_is_allowed_only_without_rotary():
    with pytest.raises(ConfigError, match="must be even for rotary"):
        LMConfig(dim=12, n_heads=4)
    m = Transformer(LMConfig(vocab_size=50, dim=12, n_heads=4, n_layers=1, max_seq_len=8, positions="none"))
    assert m(torch.randint(0, 50, (1, 8))).logits.shape == (1, 8, 50)


# ---- the assembled model --------------------------------------------------------------------

def test_default_state_dict_keys_are_unchanged():
    def shapes(**kw):
        return [(k, tuple(v.shape)) for k, v in Transformer(LMConfig(**kw)).state_dict().items()]
    one = dict(vocab_size=100, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=80, max_seq_len=16)
    assert shapes(**one) == [
        ("tok_embeddings.weight", (100, 32)),
        ("layers.0.attention_norm.weight", (32,)),
        ("layers.0.attention.wqkv.weight", (64, 32)),
        ("layers.0.attention.wo.weight", (32, 32)),
        ("layers.0.ffn_norm.weight", (32,)),
        ("layers.0.feed_forward.w_gate_up.weight", (160, 32)),
        ("layers.0.feed_forward.w_down.weight", (32, 80)),
        ("norm.weight", (32,)),
    ]
    assert shapes(**one, objective="mlm") == shapes(**one) + [
        ("mlm_head.bias", (100,)), ("mlm_head.dense.weight", (32, 32)), ("mlm_head.dense.bias", (32,)),
        ("mlm_head.norm.weight", (32,))]
    # The non-default pieces: LayerNorm weight + bias, biased projections, a two-matrix MLP.
    assert shapes(**one, **OTHER) == [
        ("tok_embeddings.weight", (100, 32)),
        ("layers.0.attention_norm.weight", (32,)),
        ("layers.0.attention_norm.bias", (32,)),
        ("layers.0.attention.wqkv.weight", (64, 32)),
        ("layers.0.attention.wqkv.bias", (64,)),
        ("layers.0.attention.wo.weight", (32, 32)),
        ("layers.0.attention.wo.bias", (32,)),
        ("layers.0.ffn_norm.weight", (32,)),
        ("layers.0.ffn_norm.bias", (32,)),
        ("layers.0.feed_forward.w_up.weight", (80, 32)),
        ("layers.0.feed_forward.w_up.bias", (80,)),
        ("layers.0.feed_forward.w_down.weight", (32, 80)),
        ("layers.0.feed_forward.w_down.bias", (32,)),
        ("norm.weight", (32,)),
        ("norm.bias", (32,)),
    ]


def test_num_params_and_flops_count_the_pieces():
    c = LMConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=80, max_seq_len=16, **OTHER)
    m = Transformer(c)
    attention = (32 * 64 + 64) + (32 * 32 + 32)              # q|k|v (2 kv heads x 8) and o, with biases
    mlp = (32 * 80 + 80) + (80 * 32 + 32)                     # two matrices, not three
    per_block = attention + mlp + 2 * (2 * 32)                # two LayerNorms: weight and bias
    expected = 100 * 32 + 2 * per_block + 2 * 32
    assert m.num_params() == expected and m.num_params(exclude_embeddings=True) == expected - 3200
    assert m.flops_per_token() == 6 * expected + 12 * 2 * 32 * 16


def recipe(objective):
    """The recipe pieces for an objective: a decoder also gets the untied, zero-initialised head."""
    return {**RECIPE, **(HEAD if objective != "mlm" else {})}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clm", "mlm", "plm"])
@pytest.mark.parametrize("pieces", ["other", "recipe"])
def test_non_default_pieces_train(objective, pieces):
    m = make(**(OTHER if pieces == "other" else recipe(objective)), objective=objective).train()
    x = torch.randint(5, 211, (4, 24), generator=torch.Generator().manual_seed(3))
    labels = torch.roll(x, -1, 1) if objective != "mlm" else torch.where(torch.rand(x.shape) < 0.3, x, -100)
    prefix = {"in_prefix": torch.arange(24).expand(4, 24) < 6} if objective == "plm" else {}
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        loss = m(x, labels=labels, **prefix).loss
        loss.backward()
        # Step 2: zero-initialised projections and head pass no gradient back until they have moved.
        if step == 2:
            for n, p in m.named_parameters():  # biases, LayerNorm biases and q/k norms included
                assert p.grad is not None and p.grad.abs().sum() > 0, n
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(211), abs=0.3)
    assert losses[-1] < losses[0] - 1.0, losses


def test_gradient_checkpointing_without_positions_changes_nothing():
    x, y = torch.randint(5, 211, (2, 32)), torch.randint(5, 211, (2, 32))
    results = []
    for flag in (False, True):
        m = make(**OTHER, gradient_checkpointing=flag).train()
        out = m(x, labels=y)
        out.loss.backward()
        results.append((out.loss.item(), [p.grad.clone() for p in m.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("pieces", [OTHER, dict(positions="none"), dict(norm="layernorm", feed_forward="gelu"),
                                    {**RECIPE, **HEAD}, {**RECIPE, "positions": "none"}],
                         ids=["all-non-default", "no-positions", "layernorm-gelu-rope", "recipe", "recipe-no-positions"])
def test_kv_cache_steps_equal_full_forward_with_left_padding(pieces):
    m = _randomise(make(**pieces), seed=4)  # random biases too, so they matter
    lengths, extra = [5, 12, 9], 18
    seqs = [torch.randint(5, 211, (n + extra,)) for n in lengths]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = s, 1
    full = m(ids, attention_mask=mask).logits
    prompt = width - extra
    cache = m.new_cache(3, width)
    steps = [m(ids[:, :prompt], attention_mask=mask[:, :prompt], cache=cache).logits]
    for t in range(prompt, width):
        steps.append(m(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
    real = mask.bool()
    assert (torch.cat(steps, dim=1)[real] - full[real]).abs().max() < 1e-4
    for i, s in enumerate(seqs):  # each padded row equals that sequence alone
        assert (full[i, width - len(s):] - m(s[None]).logits[0]).abs().max() < 1e-4


@pytest.mark.parametrize("pieces", [OTHER, dict(positions="none"), {**RECIPE, **HEAD}],
                         ids=["all-non-default", "no-positions", "recipe"])
def test_cached_greedy_generation_equals_full_forward_argmax(pieces):
    m = make(**pieces, seed=5)
    if pieces.get("zero_init"):  # zero projections and head would make every token a tie
        _randomise(m, seed=6)
    prompts = [[7, 8, 9, 10, 11], [30, 31]]
    cfg = GenerationConfig(do_sample=False, max_new_tokens=15, stop_on_eos=False)
    generated = generate_tokens(m, prompts, cfg, eos_id=2)
    for prompt, out in zip(prompts, generated):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(15):  # no cache: the whole sequence every step
                seq.append(int(m(torch.tensor([seq])).logits[0, -1].argmax()))
        assert out == seq[len(prompt):]


# ---- names refused, the Llama mapping refused -----------------------------------------------

@pytest.mark.parametrize("kw, fragment", [
    (dict(norm="batchnorm"), "model.norm must be one of rmsnorm, layernorm, got 'batchnorm'"),
    (dict(positions="alibi"), "model.positions must be one of rope, none, learned, got 'alibi'"),
    (dict(feed_forward="relu"), "model.feed_forward must be one of swiglu, gelu, gelu_tanh, relu2, got 'relu'"),
    (dict(feed_forward=["gelu"]), "model.feed_forward must be one of swiglu, gelu, gelu_tanh, relu2"),
    (dict(bias="yes"), "model.bias must be true or false, got 'yes'"),
    (dict(qkv_bias=1), "model.qkv_bias must be true or false, got 1"),
    (dict(embedding_norm="no"), "model.embedding_norm must be true or false, got 'no'"),
    (dict(residual="sandwich"), "model.residual must be one of pre, post, got 'sandwich'"),
    (dict(token_types=-1), "model.token_types must be an integer >= 0"),
    (dict(token_types=True), "model.token_types must be an integer >= 0"),
    (dict(arch="t5"), "model.arch must be one of llama, qwen2, qwen3, gpt2, bert, got 't5'"),
    (dict(qk_norm="yes"), "model.qk_norm must be true or false, got 'yes'"),
    (dict(zero_init=1), "model.zero_init must be true or false, got 1"),
    (dict(logit_softcap=-1.0), "model.logit_softcap must be a number >= 0 (0: off), got -1.0"),
    (dict(logit_softcap="15"), "model.logit_softcap must be a number >= 0"),
    (dict(tie_embeddings=False, head_init_std=-0.1), "model.head_init_std must be a number >= 0"),
    (dict(head_init_std=0.0), "model.head_init_std initialises an untied output head"),
    (dict(tie_embeddings=False, head_init_std=0.0, objective="mlm"), "model.head_init_std initialises an untied"),
])
def test_bad_piece_names_are_refused(kw, fragment):
    for build in (lambda: LMConfig(**kw), lambda: LMConfig.from_dict({**SMALL, **kw})):
        with pytest.raises(ConfigError) as e:
            build()
        assert fragment in str(e.value) and "\n" not in str(e.value)


def test_config_with_pieces_round_trips():
    c = LMConfig(**SMALL, **OTHER)
    assert LMConfig.from_dict(copy.deepcopy(c.to_dict())) == c and c.to_dict()["norm"] == "layernorm"


@pytest.mark.parametrize("key, value", [("norm", "layernorm"), ("positions", "none"), ("feed_forward", "gelu"),
                                        ("bias", True)])
def test_llama_mapping_refuses_other_pieces(key, value):
    cfg = LMConfig(**SMALL, **{key: value})
    state = Transformer(cfg).state_dict()
    for call in (lambda: LLAMA.state_to_hf(state, cfg), lambda: LLAMA.state_from_hf({}, cfg),
                 lambda: LLAMA.config_to_hf(cfg)):
        with pytest.raises(ValueError) as e:
            call()
        assert f"model.{key}={value!r}" in str(e.value) and "Llama" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("pieces", [OTHER, {**RECIPE, **HEAD}], ids=["biased-gelu", "recipe"])
def test_int8_quantizes_biased_gelu_blocks(pieces):
    from model.int8 import Int8Linear, int8_available, quantize_int8
    if not int8_available():
        pytest.skip("this torch build has no CPU int8 kernels")
    m = make(**pieces)
    if pieces.get("zero_init"):
        with torch.no_grad():  # moved away from zero, as after training (small, so the cap stays linear-ish)
            for p in m.parameters():
                p.add_(torch.randn(p.shape) * 0.02)
    quantized = quantize_int8(copy.deepcopy(m))
    assert sum(isinstance(x, Int8Linear) for x in quantized.layers.modules()) == 2 * 4  # wqkv, wo, w_up, w_down
    x = torch.randint(5, 211, (2, 30))
    with torch.inference_mode():
        exact, approx = m(x).logits, quantized(x).logits
    assert F.cosine_similarity(exact.flatten(), approx.flatten(), dim=0).item() > 0.999


# ---- the issue-20 recipe pieces ---------------------------------------------------------------

def test_relu2_mlp_equals_plain_squared_relu_mlp():
    cfg = LMConfig(**SMALL, feed_forward="relu2")
    mlp = _randomise(FEED_FORWARDS["relu2"].from_config(cfg))
    assert cfg.ffn_dim == 4 * 64 and mlp.w_up.weight.shape == (256, 64) and mlp.w_up.bias is None
    x = torch.randn(2, 5, 64, requires_grad=True)
    reference = torch.clamp(x @ mlp.w_up.weight.T, min=0) ** 2 @ mlp.w_down.weight.T
    out = mlp(x)
    assert torch.allclose(out, reference, atol=1e-4)
    g = torch.randn_like(out)
    assert torch.allclose(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(reference, x, g)[0], atol=1e-4)


def test_qk_norm_attention_equals_normalise_then_rotate_by_hand():
    """Each head's q and k RMS-normalised over its channels (one weight per channel, shared by the
    heads), then rotated: the Qwen3 order. Training (autograd) and inference paths alike."""
    cfg = LMConfig(**SMALL, qk_norm=True, norm_eps=1e-6)
    attn = _randomise(Attention(64, 4, 2, qk_norm=True, norm_eps=1e-6)).eval()
    assert attn.q_norm.weight.shape == (16,) and attn.k_norm.weight.shape == (16,)
    cos, sin = POSITIONS["rope"].from_config(cfg).tables(torch.arange(9))
    x = torch.randn(2, 9, 64, requires_grad=True)
    wq, wk, wv = attn.wqkv.weight.split((64, 32, 32))

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def rotate(t):  # split halves: (a, b) -> (a cos - b sin, b cos + a sin)
        a, b = t.chunk(2, -1)
        c, s_ = cos[..., :8], -sin[..., :8]
        return torch.cat([a * c - b * s_, b * c + a * s_], -1)
    q = rotate(rms((x @ wq.T).view(2, 9, 4, 16), attn.q_norm.weight)).transpose(1, 2)
    k = rotate(rms((x @ wk.T).view(2, 9, 2, 16), attn.k_norm.weight)).transpose(1, 2).repeat_interleave(2, 1)
    v = (x @ wv.T).view(2, 9, 2, 16).transpose(1, 2).repeat_interleave(2, 1)
    scores = (q @ k.transpose(-1, -2)) / 4.0
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    reference = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 64) @ attn.wo.weight.T
    out = attn(x, cos, sin, is_causal=True)
    assert torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    params = [x, attn.wqkv.weight, attn.q_norm.weight, attn.k_norm.weight]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(reference, params, g)):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(attn(x, cos, sin, is_causal=True), reference, atol=1e-5)


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k():
    m = make(qk_norm=True, norm_eps=1e-10)  # eps would weigh against these small initial q and k
    x = torch.randint(5, 211, (2, 20))
    before = m(x).logits
    with torch.no_grad():
        for layer in m.layers:
            layer.attention.wqkv.weight[:(4 + 2) * 16] *= 7.0  # q and k rows only
    assert torch.allclose(m(x).logits, before, atol=1e-4)
    assert "layers.0.attention.q_norm.weight" in m.state_dict() and "layers.0.attention.k_norm.weight" in m.state_dict()
    assert not any("q_norm" in k for k in make().state_dict())


def test_zero_init_and_the_head_init():
    m = make(zero_init=True, tie_embeddings=False)
    for name, p in m.named_parameters():
        if name.endswith(("attention.wo.weight", "feed_forward.w_down.weight")):
            assert p.abs().max() == 0, name
    assert m.layers[0].attention.wqkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    x = torch.randint(5, 211, (2, 12))
    # Every block starts as the identity: the logits are the final norm of the embeddings, decoded.
    alone = F.linear(m.norm(m.tok_embeddings(x)), m.output.weight)
    assert torch.allclose(m(x).logits, alone, atol=1e-5)
    assert make(tie_embeddings=False).output.weight.std().item() == pytest.approx(0.02, rel=0.1)   # None: init_std
    assert make(tie_embeddings=False, head_init_std=0.1).output.weight.std().item() == pytest.approx(0.1, rel=0.1)
    zero = make(**HEAD).train()
    assert zero.output.weight.abs().max() == 0 and zero.tok_embeddings.weight.std() > 0.01
    out = zero(x, labels=x)
    assert out.loss.item() == pytest.approx(math.log(211), abs=1e-5)  # a zero head: uniform predictions
    out.loss.backward()
    assert zero.output.weight.grad.abs().sum() > 0
    # Off by default: the default model's draws are unchanged.
    assert torch.equal(make().layers[0].attention.wo.weight, make(zero_init=False).layers[0].attention.wo.weight)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_logit_softcap_caps_every_logits_path(objective):
    cap = 1.0
    capped, plain = make(logit_softcap=cap, objective=objective), make(objective=objective)
    for m in (capped, plain):
        _randomise(m, seed=8)
    x = torch.randint(5, 211, (2, 16))
    with torch.no_grad():
        raw = plain(x).logits
        assert raw.abs().max() > 2 * cap  # the cap matters here
        assert torch.allclose(capped(x).logits, cap * torch.tanh(raw / cap), atol=1e-5)
        assert capped(x).logits.abs().max() <= cap
        labels = torch.where(torch.rand(2, 16, generator=torch.Generator().manual_seed(9)) < 0.4, x, -100)
        out = capped(x, labels=labels)
        expected = F.cross_entropy((cap * torch.tanh(raw / cap))[labels != -100], labels[labels != -100])
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
        if objective == "clm":  # the decode step (also what the compiled step traces)
            cache = capped.new_cache(2, 16)
            capped(x[:, :15], cache=cache)
            keys = torch.ones(2, 16, dtype=torch.bool)
            step = capped.decode_step(x[:, 15], cache, torch.tensor([15]), torch.full((2,), 15), keys)
            assert torch.allclose(step, capped(x).logits[:, -1], atol=1e-4)
            assert torch.allclose(step, cap * torch.tanh(raw[:, -1] / cap), atol=1e-4)


def test_recipe_chunked_loss_and_gradient_checkpointing_change_nothing():
    """Chunked soft-capped loss (its hand-written gradient), checkpointed blocks with QK-norm and
    ReLU^2: the same loss and gradients as the plain full-logits run."""
    g = torch.Generator().manual_seed(15)
    x, y = torch.randint(5, 211, (2, 40), generator=g), torch.randint(5, 211, (2, 40), generator=g)
    y[0, :5] = -100
    def build(checkpointing):
        m = _randomise(make(**RECIPE, tie_embeddings=False, gradient_checkpointing=checkpointing), seed=2)
        with torch.no_grad():
            m.output.weight.mul_(0.3)  # logits of a few units: inside the cap's curved part, not saturated
        return m

    assert_loss_and_grads_agree(build, x, y)


@pytest.mark.parametrize("objective", ["clm", "plm", "mlm"])
def test_recipe_respects_document_masks(objective):
    m = _randomise(make(**recipe(objective), objective=objective, document_mask=True), seed=3)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(5, 211, (n,), generator=g) for n in (7, 13, 4)]
    document_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        together = m(torch.cat(docs)[None], document_ids=document_ids).logits[0]
        start = 0
        for d in docs:
            assert (together[start:start + len(d)] - m(d[None]).logits[0]).abs().max() < 1e-5
            start += len(d)


@pytest.mark.slow
def test_compiled_decode_step_with_the_recipe_gives_the_eager_tokens():
    m = _randomise(make(**RECIPE, **HEAD, seed=5), seed=6)
    prompts = [[7, 8, 9, 10, 11], [30, 31]]
    cfg = GenerationConfig(do_sample=False, max_new_tokens=6, stop_on_eos=False)
    assert generate_tokens(m, prompts, cfg, eos_id=2, compiled=True) == generate_tokens(m, prompts, cfg, eos_id=2)


def test_recipe_keys_round_trip_through_a_checkpoint(tmp_path):
    import checkpoint
    from tests.helpers.tiny_models import save_checkpoint, tiny_tokenizer
    tok = tiny_tokenizer(str(tmp_path))
    m = make(**{**SMALL, **RECIPE, **HEAD, "vocab_size": 320, "head_init_std": 0.05})
    path = save_checkpoint(str(tmp_path / "run"), m, tok)
    back, cfg, _ = checkpoint.load_for_inference(path)
    assert cfg == m.config and (cfg.qk_norm, cfg.feed_forward, cfg.zero_init, cfg.head_init_std, cfg.logit_softcap,
                                cfg.tie_embeddings) == (True, "relu2", True, 0.05, 5.0, False)
    x = torch.randint(5, 320, (2, 10))
    with torch.no_grad():
        assert torch.equal(back(x).logits, m(x).logits)
    # A config written before these keys existed loads with them off.
    old = {k: v for k, v in LMConfig(**SMALL).to_dict().items()
           if k not in ("qk_norm", "zero_init", "head_init_std", "logit_softcap")}
    assert LMConfig.from_dict(old) == LMConfig(**SMALL)


@pytest.mark.parametrize("kw, fragment", [
    (dict(qk_norm=True), "model.qk_norm=True"),
    (dict(logit_softcap=15.0), "model.logit_softcap=15.0"),
    (dict(feed_forward="relu2"), "model.feed_forward='relu2'"),
])
def test_llama_export_refuses_recipe_pieces(kw, fragment):
    cfg = LMConfig(**SMALL, **kw)
    with pytest.raises(ValueError) as e:
        LLAMA.state_to_hf(Transformer(cfg).state_dict(), cfg)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    # Initialisation pieces and an untied head are only values of the weights: they export.
    plain = LMConfig(**SMALL, zero_init=True, tie_embeddings=False, head_init_std=0.0)
    assert LLAMA.config_to_hf(plain)["tie_word_embeddings"] is False


@pytest.mark.slow
def test_compiled_blocks_with_the_recipe_train_as_eager_ones():
    """train --compile (compile_blocks): QK-norm and ReLU^2 blocks give the eager loss and gradients."""
    g = torch.Generator().manual_seed(16)
    x, y = torch.randint(5, 211, (2, 24), generator=g), torch.randint(5, 211, (2, 24), generator=g)
    results = []
    for compiled in (False, True):
        m = _randomise(make(**RECIPE, tie_embeddings=False), seed=2).train()
        if compiled:
            m.compile_blocks()
        out = m(x, labels=y, return_logits=False)
        out.loss.backward()
        results.append((out.loss.item(), [p.grad.clone() for p in m.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-5)
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(results[1][1], results[0][1]))
