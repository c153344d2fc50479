"""A tiny tokenizer, tiny random models and checkpoints in the training format, for inference tests."""
import json
import os

import torch

from data.tokenizer import train_tokenizer
from model import LMConfig, Transformer
import checkpoint

LINES = ["To be, or not to be, that is the question.", "今天心情很好，我们去公园吧。", "The king 👑 and the queen 🎭.",
         "Now is the winter of our discontent.", "Friends, Romans, countrymen, lend me your ears."]


def tiny_tokenizer(root):
    corpus = os.path.join(root, "c.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(300):
            f.write(json.dumps({"text": LINES[i % len(LINES)] + f" {i}"}, ensure_ascii=False) + "\n")
    return train_tokenizer([corpus], os.path.join(root, "tokenizer.json"), vocab_size=320)


def tiny_model(objective="clm", seed=0, vocab_size=320):
    torch.manual_seed(seed)
    cfg = LMConfig(vocab_size=vocab_size, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                   objective=objective)
    return Transformer(cfg).eval()


def save_checkpoint(run_dir, model, tokenizer, ema=False):
    os.makedirs(run_dir, exist_ok=True)
    tokenizer.save(os.path.join(run_dir, "tokenizer.json"))
    parts = {"model": model.state_dict()}
    if ema:
        parts["ema"] = {k: v + 1.0 for k, v in model.state_dict().items()}
    path = os.path.join(run_dir, "best.pth")
    # evaluated="model": these fixtures stand for a run that evaluated its raw weights
    meta = checkpoint.CheckpointMeta(kind="weights", step=1, model_config=model.config.to_dict(), config={},
                                     tokenizer=tokenizer, evaluated="model")
    checkpoint.write(path, parts, meta)
    return path


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal Transformer and emits a fixed token sequence (then eos)."""

    def __init__(self, script, vocab_size, eos_id, max_seq_len=256):
        super().__init__()
        self.script, self.vocab, self.eos = list(script), vocab_size, eos_id
        self.config = LMConfig(vocab_size=vocab_size, dim=8, n_layers=1, n_heads=2, max_seq_len=max_seq_len)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.emitted = 0

    def new_cache(self, batch_size, max_len):
        self.emitted = 0
        return None

    def forward(self, ids, attention_mask=None, cache=None):
        token = self.script[self.emitted] if self.emitted < len(self.script) else self.eos
        self.emitted += 1
        logits = torch.zeros(ids.shape[0], ids.shape[1], self.vocab)
        logits[:, -1, token] = 10.0
        return type("Out", (), {"logits": logits})()

    def decode_step(self, tokens, cache, slot, positions, key_mask):
        return self.forward(tokens[:, None]).logits[:, -1]
