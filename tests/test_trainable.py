"""--trainable: frozen parameters stay bit-identical with weight decay, EMA, resume and DDP."""
import signal

import pytest
import torch

from tests.helpers.train_harness import run_ok, run_torchrun_ok, start_and_signal, train_cmd, weights, write_config


def _frozen_equal(before: dict, after: dict, new_rows_from: int) -> None:
    for name, old in before.items():
        if name == "tok_embeddings.weight":
            assert torch.equal(after[name][:new_rows_from], old[:new_rows_from]), name
            assert torch.equal(after[name][new_rows_from + 4:], old[new_rows_from + 4:]), name  # padding rows
        else:
            assert torch.equal(after[name], old), name


@pytest.mark.slow
def test_new_embeddings_train_alone(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=4, warmup=1)
    run_ok(train_cmd("--config", cfg))
    expanded = str(run_root / "expanded.pth")
    run_ok(["python", "convert.py", "expand_vocab", "--model_path", str(run_root / "out" / "run" / "best.pth"),
            "--out", expanded, "--mine", corpus, "--top", "4", "--min_count", "3"])
    source = torch.load(expanded, weights_only=True)
    start, before = source["vocab_expansion"]["new_rows_from"], source["model"]
    phase = ["--config", cfg, "--init_from", expanded, "--trainable", "new_embeddings", "--use_ema",
             "--decay_embeddings", "--weight_decay", "0.1", "--data.out_dir", str(run_root / "data2"),
             "--save_interval", "3", "--eval_interval", "3", "--max_steps", "6"]
    proc = run_ok(train_cmd(*phase, "--run_name", "whole"))
    assert "--trainable new_embeddings: 256 of" in proc.stdout + proc.stderr  # 4 new rows x 64 wide
    final = weights(run_root / "out" / "whole" / "checkpoint_step_6.pth")
    _frozen_equal(before, final, start)
    _frozen_equal(before, weights(run_root / "out" / "whole" / "checkpoint_step_6.pth", "ema"), start)
    assert not torch.equal(final["tok_embeddings.weight"][start:start + 4], before["tok_embeddings.weight"][start:start + 4])
    # Interrupted and resumed: the same weights, bit for bit.
    code, _, err = start_and_signal(train_cmd(*phase, "--run_name", "cut"), str(run_root / "out" / "cut"), 2,
                                    signal.SIGTERM)
    assert code == 0, err
    run_ok(train_cmd(*phase, "--run_name", "cut", "--resume"))
    assert all(torch.equal(final[k], v) for k, v in weights(run_root / "out" / "cut" / "checkpoint_step_6.pth").items())
    # Two ranks: the frozen parameters stay put there too.
    run_torchrun_ok(2, *phase, "--run_name", "ddp", "--batch_size", "4", "--ddp")
    _frozen_equal(before, weights(run_root / "out" / "ddp" / "checkpoint_step_6.pth"), start)


@pytest.mark.slow
def test_name_patterns_freeze_the_rest(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=3, warmup=1)
    run_ok(train_cmd("--config", cfg, "--max_steps", "1", "--warmup", "0"))
    start = str(run_root / "out" / "run" / "checkpoint_step_1.pth")
    proc = run_ok(train_cmd("--config", cfg, "--run_name", "top", "--init_from", start,
                            "--trainable", "layers.1.*", "--use_ema"))
    assert "parameters train" in proc.stdout + proc.stderr
    before, after = weights(start), weights(run_root / "out" / "top" / "checkpoint_step_3.pth")
    for name in before:
        assert torch.equal(before[name], after[name]) != name.startswith("layers.1."), name


def test_new_embeddings_combine_with_patterns_and_refuse_all():
    import pytest

    from model import ConfigError, LMConfig, Transformer
    from training.optimization.freeze import Freezer
    model = Transformer(LMConfig(vocab_size=128, dim=32, n_layers=1, n_heads=2, objective="mlm"))
    freezer = Freezer(model, "new_embeddings, mlm_head.*", new_rows=(100, 110))
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {"tok_embeddings.weight", "mlm_head.bias"} | {n for n in trains if n.startswith("mlm_head.")}
    assert any(n.startswith("mlm_head.") and n != "mlm_head.bias" for n in trains)
    assert set(freezer.rows) == {"tok_embeddings.weight", "mlm_head.bias"}  # old rows frozen even under mlm_head.*
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mlm_head.") and n != "mlm_head.bias")
    assert freezer.n_trainable == 10 * 32 + 10 + head
    with pytest.raises(ConfigError, match="choose one"):
        Freezer(model, "all,new_embeddings", new_rows=(100, 110))
    with pytest.raises(ConfigError, match="no parameter matches nothing.*"):
        Freezer(model, "embeddings,nothing.*")
