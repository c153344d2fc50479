"""Small corpora and a tiny tokenizer shared by the data tests."""
import json
import random

import numpy as np

from data.tokenizer import train_tokenizer

GOOD_WORDS = "the king queen speaks night crown sword love honour death 今天 心情 很好 🎭".split()


def write_docs(path, n=300, seed=0, field="text"):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(GOOD_WORDS) for _ in range(rng.randint(5, 60)))
            f.write(json.dumps({field: f"Doc {i}: {words}."}, ensure_ascii=False) + "\n")
    return str(path)


def make_tokenizer(root):
    corpus = write_docs(root / "tok_corpus.jsonl", n=200, seed=1)
    return train_tokenizer([corpus], str(root / "tokenizer.json"), vocab_size=300)


class FakeBin:
    """A token file in memory: tokens and document start offsets, as TokenBin gives them."""

    def __init__(self, tokens, offsets):
        self.tokens = np.asarray(tokens, dtype="<u2")
        self.offsets = np.asarray(offsets, dtype="<u8")

    def doc_offsets(self):
        return self.offsets


def write_bad_corpus(path):
    lines = [
        b'{"text": "good one"}\n',
        b'{"text": "bad json"\n',                                   # invalid_json
        b'["a", "list"]\n',                                          # not_object
        b'{"content": "wrong field"}\n',                             # missing_field
        b'{"text": 42}\n',                                           # non_string
        b'{"text": "   \\n\\t "}\n',                                 # empty_text
        b'{"text": "caf\xe9 latin-1"}\n',                            # invalid_utf8
        b'{"text": "nul \\u0000 inside"}\n',                         # contains_nul
        b'\n',                                                        # empty_line
        b'{"text": "crlf line"}\r\n',                                # kept: CRLF stripped
        b'\xef\xbb\xbf{"text": "bom line"}\n',                       # kept: BOM stripped
        b'{"text": "' + b"x" * 3_000_000 + b'"}\n',                  # kept: one line of 3 MB
        b'{"text": "lone surrogate \\ud800"}\n',                     # invalid_utf8
        b'{"text": "no final newline"}',                             # kept
    ]
    path.write_bytes(b"".join(lines))
    return str(path)

