"""convert.py from_hf on damaged or strange Hugging Face directories: each is one line naming what
is wrong (no traceback), decided before a model is built. The directories are written here: a
tiny model in its family's layout, a WordPiece vocab.txt and the special tokens' roles."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from convert import from_hf
from model import LMConfig, Transformer
from model.hf import FAMILIES
from utils import UserError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij", "the", "king"]


def hf_dir(root, family):
    os.makedirs(root)
    cfg = LMConfig(arch=family, objective="mlm" if family == "bert" else "clm", vocab_size=32, dim=16, n_layers=1,
                   n_heads=2, max_seq_len=16, hidden_dim=32)
    torch.manual_seed(0)
    state = FAMILIES[family].state_to_hf(Transformer(cfg).state_dict(), cfg)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(root, "model.safetensors"))
    write(root, "config.json", FAMILIES[family].config_to_hf(cfg))
    with open(os.path.join(root, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    write(root, "tokenizer_config.json", {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                          "sep_token": "[SEP]", "mask_token": "[MASK]"})
    return root


def write(root, name, data):
    with open(os.path.join(root, name), "w", encoding="utf-8") as f:
        json.dump(data, f)


def edit_config(**changes):
    def edit(root):
        with open(os.path.join(root, "config.json")) as f:
            config = json.load(f)
        write(root, "config.json", {**config, **changes})
    return edit


def cut_weights(root):
    path = os.path.join(root, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def garbage_weights(root):
    with open(os.path.join(root, "model.safetensors"), "wb") as f:
        f.write(bytes(range(256)) * 16)


def config_directory(root):
    os.remove(os.path.join(root, "config.json"))
    os.mkdir(os.path.join(root, "config.json"))


def latin1_vocab(root):
    with open(os.path.join(root, "vocab.txt"), "wb") as f:
        f.write("\n".join([*VOCAB, "café"]).encode("latin-1"))


CASES = {
    "truncated safetensors": ("llama", cut_weights, "model.safetensors is not a readable safetensors file"),
    "garbage safetensors": ("llama", garbage_weights, "model.safetensors is not a readable safetensors file"),
    "index naming a missing shard": ("llama", lambda r: write(r, "model.safetensors.index.json", {
        "weight_map": {"embed_tokens.weight": "model-00001-of-00002.safetensors"}}),
        "model-00001-of-00002.safetensors not found"),
    "index with a list weight_map": ("llama", lambda r: write(r, "model.safetensors.index.json", {
        "weight_map": ["model.safetensors"]}), "weight_map must be an object"),
    "config.json a list": ("llama", lambda r: write(r, "config.json", [1, 2]), "must hold a JSON object, not a list"),
    "config.json a directory": ("llama", config_directory, "config.json cannot be read"),
    "null rms_norm_eps": ("llama", edit_config(rms_norm_eps=None), "rms_norm_eps must be a non-negative number"),
    "null resid_pdrop": ("gpt2", edit_config(resid_pdrop=None), "resid_pdrop must be a non-negative number"),
    "null layer_norm_eps": ("bert", edit_config(layer_norm_eps=None), "layer_norm_eps must be a non-negative number"),
    "text tie_word_embeddings": ("gpt2", edit_config(tie_word_embeddings="false"),
                                 "tie_word_embeddings must be true or false"),
    "list model_type": ("llama", edit_config(model_type=["llama"]), "model_type must be a string"),
    "text architectures": ("llama", edit_config(model_type=None, architectures="LlamaForCausalLM"),
                           "architectures must be a list of class names"),
    "list rope_parameters": ("llama", edit_config(rope_parameters=["default"]), "rope_parameters must be an object"),
    "vocab_size 10**12": ("llama", edit_config(vocab_size=10**12), "more than this machine's"),
    "10**9 layers": ("llama", edit_config(num_hidden_layers=10**9), "more than this machine's"),
    "vocab.txt not UTF-8": ("bert", latin1_vocab, "vocab.txt is not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_hugging_face_directory_is_one_line(tmp_path, case):
    family, damage, fragment = CASES[case]
    root = hf_dir(str(tmp_path / "hf"), family)
    from_hf(root, str(tmp_path / "sound.pth"), say=lambda *_: None)  # the directory was sound before
    damage(root)
    with pytest.raises(UserError) as caught:
        from_hf(root, str(tmp_path / "out.pth"), say=lambda *_: None)
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    assert not os.path.exists(tmp_path / "out.pth")
