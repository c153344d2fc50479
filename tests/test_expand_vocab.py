"""convert.py expand_vocab: new tokens are single ids, their rows start as the mean of their old
pieces, and nothing old changes."""
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
from convert import expand_vocab
from tests.helpers.tiny_models import save_checkpoint, tiny_model, tiny_tokenizer
from tests.helpers.train_harness import ROOT

WORDS = ["queenliness", "今天心情", "Denmarkish"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("expand")
    tok = tiny_tokenizer(str(root))
    return {o: save_checkpoint(str(root / o), tiny_model(o), tok) for o in ("clm", "mlm")}, root


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_expansion_keeps_old_rows_and_starts_new_ones_from_their_pieces(source, objective, tmp_path):
    paths, _ = source
    old_model, _, old_tok = checkpoint.load_for_inference(paths[objective])
    out = str(tmp_path / "expanded.pth")
    result = expand_vocab(paths[objective], out, WORDS + ["e"], say=lambda *_: None)
    assert result["added"] == WORDS and result["skipped"] == ["e"]
    model, cfg, tok = checkpoint.load_for_inference(out)
    n_old = old_tok.vocab_size
    expansion = checkpoint.load_checkpoint(out)["vocab_expansion"]
    assert expansion == {"new_rows_from": n_old, "expanded_from": old_tok.fingerprint()}
    old_emb, emb = old_model.tok_embeddings.weight, model.tok_embeddings.weight
    assert torch.equal(emb[:n_old], old_emb[:n_old])                        # old rows untouched
    for word, i in zip(WORDS, result["ids"]):
        pieces = old_tok.encode(word)
        assert len(pieces) > 1 and torch.equal(emb[i], old_emb[pieces].mean(0))
        if objective == "mlm":
            assert torch.equal(model.mlm_head.bias[i], old_model.mlm_head.bias[pieces].mean(0))
    # Each new token is one id in running text; text without the new words encodes as before.
    running = tok.encode("Of queenliness and Denmarkish ways: 今天心情很好")
    assert all(i in running for i in result["ids"])
    plain = "To be, or not to be, that is the question."
    assert tok.encode(plain) == old_tok.encode(plain)
    x = torch.tensor([old_tok.encode(plain)])
    assert torch.equal(model(x).logits[..., :n_old], old_model(x).logits[..., :n_old])


@pytest.mark.slow
def test_cli_mines_words_and_refuses_nothing_new(source, tmp_path):
    paths, root = source
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join('{"text": "kingdomship queenliness, kingdomship queenliness and the rest."}\n' for _ in range(6)))
    out = tmp_path / "mined.pth"
    cmd = [sys.executable, os.path.join(ROOT, "convert.py"), "expand_vocab", "--model_path", paths["clm"],
           "--out", str(out), "--mine", str(corpus), "--top", "2", "--min_count", "5"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "added 2 tokens" in proc.stdout, proc.stderr
    tok = checkpoint.tokenizer_of(checkpoint.load_checkpoint(str(out)))
    assert len(tok.encode("kingdomship")) == 1 and len(tok.encode("queenliness")) == 1
    words = tmp_path / "w.txt"
    words.write_text("e\n")
    cmd[cmd.index("--mine"):] = ["--tokens", str(words)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no new tokens" in proc.stderr
