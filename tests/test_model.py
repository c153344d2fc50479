"""The Transformer: causality, bidirectionality, KV cache, GQA, sparse MLM logits, chunked loss,
gradients, parameter counts, save/load, activation checkpointing and config validation."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from model import ConfigError, LMConfig, Transformer

SMALL = dict(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)


def make(**kw):
    torch.manual_seed(0)
    m = Transformer(LMConfig(**{**SMALL, **kw}))
    m.eval()
    return m


def test_causal_outputs_never_see_the_future():
    m = make()
    x = torch.randint(5, 211, (2, 40))
    y = x.clone()
    y[:, 25:] = torch.randint(5, 211, (2, 15))
    a, b = m(x).logits, m(y).logits
    assert torch.equal(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])


def test_masked_lm_sees_both_ways():
    m = make(objective="mlm")
    x = torch.randint(5, 211, (2, 40))
    y = x.clone()
    y[:, 35] = (x[:, 35] + 1) % 200 + 5
    assert (m(x).logits[:, :10] - m(y).logits[:, :10]).abs().max() > 1e-6


def test_masked_lm_padding_mask_hides_padding():
    m = make(objective="mlm")
    x = torch.randint(5, 211, (1, 20))
    padded = torch.cat([x, torch.zeros(1, 12, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 20), torch.zeros(1, 12)], dim=1).long()
    assert (m(padded, attention_mask=mask).logits[:, :20] - m(x).logits).abs().max() < 1e-5


def test_kv_cache_steps_equal_full_forward_with_left_padding():
    m = make()
    lengths = [5, 12, 9]
    total = 30
    seqs = [torch.randint(5, 211, (n + total - 12,)) for n in lengths]   # prompt + continuation
    width = max(len(s) for s in seqs)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, s in enumerate(seqs):                                          # left padding
        ids[i, width - len(s):], mask[i, width - len(s):] = s, 1
    full = m(ids, attention_mask=mask).logits
    prompt = width - (total - 12)
    cache = m.new_cache(3, width)
    steps = [m(ids[:, :prompt], attention_mask=mask[:, :prompt], cache=cache).logits]
    for t in range(prompt, width):
        steps.append(m(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
    stepped = torch.cat(steps, dim=1)
    real = mask.bool()
    assert (stepped[real] - full[real]).abs().max() < 1e-4
    # and each padded row equals that sequence alone, unpadded
    for i, s in enumerate(seqs):
        alone = m(s[None]).logits[0]
        assert (full[i, width - len(s):] - alone).abs().max() < 1e-4


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_padding_rows_stay_finite(objective):
    """Padding queries may see no real key (left padding in a causal model): no NaN anywhere, and
    the real positions still get a loss and gradients."""
    m = make(objective=objective)
    m.train()
    ids = torch.randint(5, 211, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :9] = 0
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    out = m(ids, labels=labels, attention_mask=mask)
    out.loss.backward()
    assert torch.isfinite(m(ids, attention_mask=mask).logits).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_cache_overflow_is_a_clear_error():
    m = make()
    cache = m.new_cache(1, 8)
    m(torch.randint(5, 211, (1, 6)), cache=cache)
    with pytest.raises(ValueError, match="KV cache full: 6 \\+ 3 tokens exceed its 8 positions"):
        m(torch.randint(5, 211, (1, 3)), cache=cache)


def test_grouped_query_attention_equals_repeated_heads():
    gqa = make(n_heads=4, n_kv_heads=2)
    mha = Transformer(LMConfig(**{**SMALL, "n_kv_heads": 4}))
    mha.eval()
    state = copy.deepcopy(gqa.state_dict())
    hd = 64 // 4
    for i in range(2):
        key = f"layers.{i}.attention.wqkv.weight"
        q, k, v = state[key].split((4 * hd, 2 * hd, 2 * hd))   # 4 query heads, 2 key/value heads
        repeat = lambda w: w.view(2, hd, 64).repeat_interleave(2, dim=0).reshape(4 * hd, 64)
        state[key] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    x = torch.randint(5, 211, (2, 30))
    assert (gqa(x).logits - mha(x).logits).abs().max() < 1e-5


def test_sparse_mlm_loss_equals_dense_loss():
    m = make(objective="mlm")
    x = torch.randint(5, 211, (3, 40))
    labels = torch.full_like(x, -100)
    pick = torch.rand(x.shape) < 0.2
    labels[pick] = x[pick]
    out = m(x, labels=labels)
    dense = m(x).logits
    assert out.logits.shape == (pick.sum().item(), 211)
    ref = F.cross_entropy(dense.reshape(-1, 211), labels.reshape(-1), ignore_index=-100)
    assert abs(out.loss.item() - ref.item()) < 1e-5 and out.n_targets.item() == pick.sum().item()


def test_chunked_loss_and_gradients_equal_dense():
    m = make()
    m.train()
    x, y = torch.randint(5, 211, (3, 40)), torch.randint(5, 211, (3, 40))
    y[0, :7] = -100
    dense = m(x, labels=y, return_logits=True)
    dense.loss.backward()
    g_dense = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    chunked = m(x, labels=y, return_logits=False)
    chunked.loss.backward()
    assert chunked.logits is None and abs(chunked.loss.item() - dense.loss.item()) < 1e-5
    for n, p in m.named_parameters():
        assert (p.grad - g_dense[n]).abs().max() < 1e-5, n


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_every_parameter_gets_a_gradient(objective):
    m = make(objective=objective, tie_embeddings=objective == "mlm")
    m.train()
    x = torch.randint(5, 211, (2, 32))
    labels = x.clone() if objective == "mlm" else torch.roll(x, -1, 1)
    m(x, labels=labels).loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_num_params_matches_hand_count():
    c = LMConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=80, max_seq_len=16)
    m = Transformer(c)
    per_block = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * 32 * 80 + 2 * 32   # q, k+v (2 kv heads x 8), o, mlp, norms
    expected = 100 * 32 + 2 * per_block + 32                                # tied embedding + final norm
    assert m.num_params() == expected and m.num_params(exclude_embeddings=True) == expected - 3200
    untied = Transformer(LMConfig(**{**c.to_dict(), "tie_embeddings": False}))
    assert untied.num_params() == expected + 3200
    assert m.flops_per_token() == 6 * (expected - 3200 + 3200) + 12 * 2 * 32 * 16
    from training.reporting.throughput import mfu  # MFU lives in one place, over the model's own FLOP count
    assert mfu(m, 1000.0, m.flops_per_token() * 4000.0) == pytest.approx(0.25)
    assert mfu(m, 1000.0, m.flops_per_token() * 2000.0, world_size=2) == pytest.approx(0.25)
    # sparse MLM logits: only a share of positions pays for the vocabulary projection
    assert m.flops_per_token(head_fraction=0.25) == 6 * (expected - 3200 + 800) + 12 * 2 * 32 * 16


def test_state_dict_round_trip(tmp_path):
    m = make()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    other = Transformer(LMConfig(**SMALL))
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    other.eval()
    x = torch.randint(5, 211, (2, 20))
    assert torch.equal(m(x).logits, other(x).logits)


def test_gradient_checkpointing_changes_memory_not_results():
    x, y = torch.randint(5, 211, (2, 32)), torch.randint(5, 211, (2, 32))
    results = []
    for flag in (False, True):
        m = make(gradient_checkpointing=flag)
        m.train()
        out = m(x, labels=y, return_logits=False)
        out.loss.backward()
        results.append((out.loss.item(), [p.grad.clone() for p in m.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        assert (a - b).abs().max() < 1e-6


@pytest.mark.parametrize("kw, fragment", [
    (dict(dim=100, n_heads=3), "model.dim (100) must be divisible by model.n_heads (3)"),
    (dict(n_heads=4, n_kv_heads=3), "model.n_heads (4) must be divisible by model.n_kv_heads (3)"),
    (dict(objective="t5"), "model.objective must be one of clm, mlm"),
    (dict(n_layers=0), "model.n_layers must be a positive integer"),
    (dict(dropout=1.5), "model.dropout must be in [0, 1)"),
    (dict(depth=0), "model.depth must be a positive integer"),
    (dict(depth=True), "model.depth must be a positive integer"),
])
def test_config_errors_name_the_key(kw, fragment):
    with pytest.raises(ConfigError) as e:
        LMConfig(**kw)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_depth_is_one_dial_for_width_blocks_and_heads_and_given_keys_win():
    assert (LMConfig().dim, LMConfig().n_layers, LMConfig().n_heads) == (256, 4, 4)  # depth 4's shape
    six = LMConfig(depth=6)
    assert (six.dim, six.n_layers, six.n_heads, six.head_dim) == (384, 6, 6, 64)
    assert LMConfig.from_dict(six.to_dict()) == six
    given = LMConfig(depth=6, n_layers=2, n_heads=3)
    assert (given.dim, given.n_layers, given.n_heads) == (384, 2, 3)
    assert Transformer(LMConfig(depth=2, vocab_size=64)).num_params() < Transformer(LMConfig(depth=3, vocab_size=64)).num_params()


def test_config_round_trip_and_presets():
    c = LMConfig(**SMALL)
    assert LMConfig.from_dict(c.to_dict()) == c
    assert LMConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert LMConfig.from_dict(yaml.safe_load(yaml.safe_dump(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="unknown model key"):
        LMConfig.from_dict({"dims": 3})
    sizes = {name: Transformer(LMConfig.preset(name)).num_params() for name in ("tiny", "small")}
    assert 1e6 < sizes["tiny"] < 5e6 and 20e6 < sizes["small"] < 30e6
    with torch.device("meta"):
        gpt2 = Transformer(LMConfig.preset("gpt2"))
    assert 120e6 < gpt2.num_params() < 130e6
