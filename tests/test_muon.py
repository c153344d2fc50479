"""Muon (training/optimization/muon.py, --optimizer_type muon): the float32 Newton-Schulz iteration against
torch's bfloat16 one, the update rule against torch.optim.Muon, the AdamW groups against
torch.optim.AdamW, which parameter goes to which group at which rate, the scheduler keeping each
group's own rate, the state round trip, the FLOPs line and the one-line refusals."""
import math

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newton_schulz

from model import LMConfig, Transformer
from model.config import ConfigError
from training.config import TrainConfig, build_config
from training.optimization.muon import NS_COEFFICIENTS, MuonAdamW, newton_schulz, newton_schulz_flops, shape_scale
from training.optimization.optimizers import build_optimizer, check_settings, describe_muon, muon_groups
from training.optimization.schedule import LRScheduler


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_float32_iteration_matches_torchs_bfloat16_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz(g)
    theirs = torch_newton_schulz(g, NS_COEFFICIENTS, 5, 1e-7).float()
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    assert ((ours - theirs).norm() / theirs.norm()).item() < 0.03  # bf16 rounding, ~1.5% measured
    # the same iteration: in bfloat16 ours is torch's to the bit
    assert torch.equal(newton_schulz(g, dtype=torch.bfloat16), torch_newton_schulz(g, NS_COEFFICIENTS, 5, 1e-7))
    s = torch.linalg.svdvals(ours)  # near-orthogonal: every singular value pulled towards 1
    assert 0.45 < s.min().item() and s.max().item() < 1.25


def test_muon_group_step_follows_torch_optim_muon():
    torch.manual_seed(1)
    w0 = torch.randn(24, 8)
    grads = [torch.randn(24, 8) for _ in range(3)]
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = MuonAdamW([{"params": [ours], "kind": "muon"}], lr=0.02, weight_decay=0.1, momentum=0.95)
    ref = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step(), ref.step()
    assert torch.equal(opt.state[ours]["momentum_buffer"], ref.state[theirs]["momentum_buffer"])
    moved_ours, moved_theirs = ours.detach() - w0, theirs.detach() - w0
    assert ((moved_ours - moved_theirs).norm() / moved_theirs.norm()).item() < 0.03
    assert shape_scale((24, 8)) == math.sqrt(3) and shape_scale((8, 24)) == 1.0


def test_adamw_groups_equal_torch_adamw_to_the_bit():
    torch.manual_seed(2)
    shapes = [(6, 4), (4,)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = MuonAdamW([{"params": ours[:1], "weight_decay": 0.1}, {"params": ours[1:], "weight_decay": 0.0}],
                    lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW([{"params": theirs[:1], "weight_decay": 0.1}, {"params": theirs[1:], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        opt.step(), ref.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def _train(**kw):
    return TrainConfig(optimizer_type="muon", learning_rate=1e-3, **kw)


def _model(**kw):
    torch.manual_seed(0)
    return Transformer(LMConfig(vocab_size=64, dim=16, n_layers=2, n_heads=2, max_seq_len=8, **kw))


def test_groups_take_block_matrices_for_muon_and_the_rest_for_adamw():
    model = _model(tie_embeddings=False)
    groups = {g["name"]: g for g in muon_groups(model, _train(embedding_lr=5e-3, head_lr=2e-3))}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: sorted(names[id(p)] for p in g["params"]) for k, g in groups.items()}
    assert members["muon"] == sorted(n for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2)
    assert members["embedding"] == ["tok_embeddings.weight"] and members["head"] == ["output.weight"]
    assert members["no_decay"] == sorted(n for n, p in model.named_parameters() if p.ndim == 1)
    assert "decay" not in groups  # nothing else 2-D here
    assert {k: (g["kind"], g["lr"], g["weight_decay"]) for k, g in groups.items()} == {
        "muon": ("muon", 0.02, 0.1), "embedding": ("adamw", 5e-3, 0.0), "head": ("adamw", 2e-3, 0.1),
        "no_decay": ("adamw", 1e-3, 0.0)}
    assert groups["muon"]["lr_scale"] == pytest.approx(20.0) and groups["no_decay"]["lr_scale"] == 1.0
    # tied head: the embedding, once; the rates default to learning_rate
    tied = {g["name"]: g for g in muon_groups(_model(), _train())}
    assert "head" not in tied and tied["embedding"]["lr"] == 1e-3
    # frozen parameters (--trainable) are left out
    model = _model()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("layers.0."))
    kept = [n for g in muon_groups(model, _train()) for n, p in model.named_parameters() if any(p is q for q in g["params"])]
    assert sorted(kept) == sorted(n for n, _ in model.named_parameters() if n.startswith("layers.0."))


def test_scheduler_keeps_each_groups_own_rate_and_state_round_trips(tmp_path):
    model = _model(tie_embeddings=False)
    t = _train(head_lr=4e-3)
    opt = build_optimizer(model, t, torch.device("cpu"))
    sched = LRScheduler(opt, base_lr=1e-3, min_lr=1e-4, warmup_steps=2, total_steps=10, kind="cosine")
    x = torch.randint(0, 64, (2, 8))
    for _ in range(3):
        lr = sched.step()
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name == {"muon": lr * 20.0, "embedding": lr, "head": lr * 4.0, "no_decay": lr}
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    state = torch.load(tmp_path / "o.pt", weights_only=True)
    again = build_optimizer(_model(tie_embeddings=False), t, torch.device("cpu"))
    again.load_state_dict(state)
    assert [sorted(s) for s in again.state_dict()["state"].values()] == [sorted(s) for s in state["state"].values()]
    assert sorted(opt.state_dict()["state"][0]) == ["momentum_buffer"]


def test_flops_line_is_derived_from_the_real_shapes():
    model = _model()
    opt = build_optimizer(model, _train(), torch.device("cpu"))
    # per layer: q, k, v (16, 16) each from wqkv, wo (16, 16), gate and up from w_gate_up, w_down
    shapes = opt.muon_shapes()
    assert len(shapes) == 14 and shapes.count((16, 16)) == 8
    assert newton_schulz_flops((48, 16)) == 5 * (4 * 16 * 16 * 48 + 2 * 16 ** 3)
    total = sum(newton_schulz_flops(s) for s in shapes)
    line = describe_muon(opt, flops_per_step=100 * total)
    assert line.startswith("muon: Newton-Schulz on 14 matrices") and "1% of the step" in line and "\n" not in line


@pytest.mark.parametrize("flags, message", [
    (["--optimizer_type", "muon", "--muon_lr", "0"], "train.muon_lr must be positive, got 0.0"),
    (["--optimizer_type", "muon", "--muon_momentum", "1"], r"train.muon_momentum must be in \[0, 1\)"),
    (["--optimizer_type", "muon", "--embedding_lr", "-1"], "train.embedding_lr must be positive"),
    (["--head_lr", "0.01"], "train.head_lr sets a Muon run's AdamW group; with --optimizer_type adamw"),
])
def test_bad_muon_settings_are_one_line_errors(flags, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_config(flags)
    assert "\n" not in str(e.value)


def test_good_muon_settings_pass():
    cfg = build_config(["--optimizer_type", "muon", "--muon_lr", "0.01", "--embedding_lr", "0.3"])
    assert check_settings(cfg.train) == "" and cfg.train.muon_lr == 0.01 and cfg.train.embedding_lr == 0.3


def test_a_fused_projection_is_orthogonalised_matrix_by_matrix():
    """q, k and v stored as one weight take the updates three separate matrices would."""
    torch.manual_seed(3)
    parts = [torch.randn(8, 8), torch.randn(4, 8), torch.randn(4, 8)]
    fused = torch.nn.Parameter(torch.zeros(16, 8))
    alone = [torch.nn.Parameter(torch.zeros(p.shape)) for p in parts]
    opt = MuonAdamW([{"params": [fused], "kind": "muon"}], lr=0.02, fused_rows={fused: (8, 4, 4)})
    ref = MuonAdamW([{"params": alone, "kind": "muon"}], lr=0.02)
    fused.grad = torch.cat(parts)
    for a, g in zip(alone, parts):
        a.grad = g.clone()
    opt.step(), ref.step()
    assert torch.allclose(fused.detach(), torch.cat([a.detach() for a in alone]), atol=1e-7)
    whole = MuonAdamW([{"params": [w := torch.nn.Parameter(torch.zeros(16, 8))], "kind": "muon"}], lr=0.02)
    w.grad = torch.cat(parts)
    whole.step()
    assert not torch.allclose(w.detach(), fused.detach(), atol=1e-3)  # the split is what made them equal
    assert opt.muon_shapes() == [(8, 8), (4, 8), (4, 8)]


def test_the_models_fused_weights_name_their_matrices():
    from model import LMConfig, Transformer
    from training.optimization.optimizers import fused_rows
    model = Transformer(LMConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48))
    rows = {tuple(w.shape): r for w, r in fused_rows(model).items()}
    assert rows == {(64, 32): (32, 16, 16), (96, 32): (48, 48)}
