"""EMA against its closed form, exact swap/restore, state round trips and wrapped models."""
import pytest
import torch
import torch.distributed as dist

from training.optimization.ema import EMA, unwrap


def _linear(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2).to(dtype)


def _set(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def _decays(decay, n):
    """The decays of the first n updates: warmed up as (1 + t) / (10 + t), capped at decay."""
    return [min(decay, (1 + t) / (10 + t)) for t in range(n)]


def test_constant_target_matches_closed_form():
    model = _linear()
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    ema = EMA(model, decay=0.9)
    _set(model, 2.0)
    for _ in range(7):
        ema.update(model)
    # s_k = (prod d_t) s_0 + (1 - prod d_t) * target
    kept = torch.tensor(_decays(0.9, 7), dtype=torch.float64).prod().item()
    assert torch.allclose(ema.shadow["weight"], kept * w0 + (1 - kept) * 2.0, atol=1e-6)
    assert torch.allclose(ema.shadow["bias"], kept * b0 + (1 - kept) * 2.0, atol=1e-6)
    assert (ema.decay, ema.num_updates) == (0.9, 7)


def test_changing_weights_match_the_recurrence():
    model = _linear()
    ema = EMA(model, decay=0.5)
    expected = model.weight.detach().double().clone()
    values = (1.0, -3.0, 0.25, 4.0, -1.0, 2.0, 0.5, 3.0, -2.0, 1.5)  # past the warm-up: d reaches 0.5 at t = 8
    for value, d in zip(values, _decays(0.5, len(values))):
        _set(model, value)
        ema.update(model)
        expected = d * expected + (1 - d) * value
    assert torch.allclose(ema.shadow["weight"].double(), expected, rtol=0, atol=1e-6)
    assert ema.decay_at(8) == 0.5 and ema.decay_at(0) == pytest.approx(0.1)


def test_warm_up_keeps_a_short_run_close_to_its_weights():
    """With decay 0.999 and no warm-up, 50 updates toward a target leave 95% of the initial
    weights in the average; warmed up, the average is within a few percent of the target."""
    model = _linear()
    w0 = model.weight.detach().clone()
    ema = EMA(model, decay=0.999)
    _set(model, 2.0)
    for _ in range(50):
        ema.update(model)
    left = (ema.shadow["weight"] - 2.0).abs() / (w0 - 2.0).abs()  # the share of the start still in it
    assert left.max() < 0.2, left
    assert ema.decay_at(10_000) == 0.999  # the configured decay rules once the warm-up passes it


def test_decay_edges_and_validation():
    model = _linear()
    follow = EMA(model, decay=0.0)
    _set(model, 5.0)
    follow.update(model)
    assert torch.equal(follow.shadow["weight"], torch.full_like(model.weight, 5.0))
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\], got 1.5"):
        EMA(model, decay=1.5)


def test_shadow_is_fp32_detached_and_skips_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).to(torch.bfloat16)
    ema = EMA(model, decay=0.75)
    assert set(ema.shadow) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    assert all(t.dtype == torch.float32 and not t.requires_grad for t in ema.shadow.values())
    with torch.no_grad():
        model[1].running_var.fill_(3.0)  # float buffers are averaged too
    ema.update(model)
    assert torch.allclose(ema.shadow["1.running_var"], torch.full((4,), 0.1 + 0.9 * 3.0), rtol=0, atol=1e-6)  # first decay: 0.1
    ema.copy_to(model)
    assert model[0].weight.dtype == torch.bfloat16  # copy_to keeps the model's dtype


def test_swap_into_restores_exactly_even_on_error():
    model = _linear()
    ema = EMA(model, decay=0.9)
    _set(model, 1.0)
    for _ in range(3):
        ema.update(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swap_into(model) as m:
        assert m is model
        assert torch.equal(model.weight, ema.shadow["weight"])
        assert not torch.equal(model.weight, trained["weight"])
        x = torch.ones(1, 3)
        assert torch.allclose(model(x), x @ ema.shadow["weight"].T + ema.shadow["bias"])
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swap_into(model):
            raise RuntimeError("boom")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_state_round_trip_through_weights_only_load(tmp_path):
    model = _linear()
    ema = EMA(model, decay=0.9)
    _set(model, 1.0)
    ema.update(model), ema.update(model)
    torch.save({"ema": ema.state_dict(), "ema_updates": ema.counter.state_dict()}, tmp_path / "c.pth")
    saved = torch.load(tmp_path / "c.pth", weights_only=True)
    assert set(saved["ema"]) == {"weight", "bias"}  # nothing but the model's names
    other = EMA(_linear(seed=1), decay=0.9)  # the decay comes from the run's config, not the checkpoint
    other.load_state_dict(saved["ema"])
    other.counter.load_state_dict(saved["ema_updates"])
    assert other.decay == 0.9 and other.num_updates == 2
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    fresh = _linear(seed=2)
    fresh.load_state_dict(saved["ema"])  # the EMA entry is a loadable model state
    assert torch.equal(fresh.weight, ema.shadow["weight"])
    # updates continue identically after the round trip
    other.update(model), ema.update(model)
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"])


def test_resume_continues_the_warm_up_exactly(tmp_path):
    """The update count is a checkpoint part of its own: restored, the next decays are the ones
    an uninterrupted run uses; without it the warm-up would start over."""
    model = _linear()
    ema = EMA(model, decay=0.99)
    for value in (1.0, 2.0, 3.0):
        _set(model, value)
        ema.update(model)
    torch.save({"ema": ema.state_dict(), "ema_updates": ema.counter.state_dict()}, tmp_path / "c.pth")
    saved = torch.load(tmp_path / "c.pth", weights_only=True)
    resumed, restarted = EMA(_linear(seed=1), decay=0.99), EMA(_linear(seed=1), decay=0.99)
    resumed.load_state_dict(saved["ema"]), restarted.load_state_dict(saved["ema"])
    resumed.counter.load_state_dict(saved["ema_updates"])
    assert resumed.num_updates == 3
    _set(model, -1.0)
    for e in (ema, resumed, restarted):
        e.update(model)
    assert torch.equal(resumed.shadow["weight"], ema.shadow["weight"])
    assert not torch.allclose(restarted.shadow["weight"], ema.shadow["weight"])


def test_load_rejects_another_model_in_one_line():
    ema = EMA(_linear())
    with pytest.raises(ValueError, match=r"missing \['bias'\], unexpected \['extra'\]"):
        ema.load_state_dict({"weight": torch.zeros(2, 3), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"EMA state weight: shape \(3, 3\), the model has \(2, 3\)"):
        ema.load_state_dict({"weight": torch.zeros(3, 3), "bias": torch.zeros(2)})


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False)
        self.b.weight = self.a.weight


def test_tied_weights_share_one_shadow():
    model = _Tied()
    ema = EMA(model, decay=0.5)
    assert set(ema.shadow) == {"a.weight", "b.weight"} and ema.shadow["a.weight"] is ema.shadow["b.weight"]
    w0 = model.a.weight.detach().clone()
    _set(model, 4.0)
    ema.update(model)  # averaged once, not twice (twice would leave 0.01 of w0)
    assert torch.allclose(ema.state_dict()["b.weight"], 0.1 * w0 + 0.9 * 4.0, rtol=0, atol=1e-6)


def test_compiled_model_is_unwrapped():
    model = _linear()
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    assert unwrap(compiled) is model
    ema = EMA(compiled, decay=0.5)
    assert set(ema.shadow) == {"weight", "bias"}
    _set(model, 2.0)
    ema.update(compiled)
    with ema.swap_into(compiled):
        assert torch.equal(model.bias, ema.shadow["bias"])
    assert torch.equal(model.bias, torch.full((2,), 2.0))


def test_ddp_model_is_unwrapped():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = _linear()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert unwrap(ddp) is model
        ema = EMA(ddp, decay=0.5)
        assert set(ema.shadow) == {"weight", "bias"}
        w0 = model.weight.detach().clone()
        _set(model, 2.0)
        ema.update(ddp)
        assert torch.allclose(ema.shadow["weight"], 0.1 * w0 + 0.9 * 2.0, rtol=0, atol=1e-6)
        ema.copy_to(ddp)
        assert torch.equal(model.weight, ema.shadow["weight"])
    finally:
        dist.destroy_process_group()
