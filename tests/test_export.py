"""convert.py to_hf: the native layout loads back into our model, the family layout loads in
transformers with the same logits and tokenizer, and errors are one line."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from convert import to_hf
from model import LMConfig, Transformer
from tests.gen_fixtures import save_checkpoint, tiny_model, tiny_tokenizer
from tests.train_harness import ROOT

quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = tiny_tokenizer(str(root))
    return save_checkpoint(str(root / "run"), tiny_model("clm", seed=3), tok, ema=True), root


def test_native_export_round_trips(ckpt):
    path, root = ckpt
    out = to_hf(path, str(root / "native"), fmt="native", say=quiet)
    cfg = LMConfig.from_dict(json.load(open(f"{out}/config.json")))
    model = Transformer(cfg).eval()
    model.load_state_dict(load_file(f"{out}/model.safetensors"))
    x = torch.randint(5, cfg.vocab_size, (2, 20))
    assert torch.equal(model(x).logits, tiny_model("clm", seed=3)(x).logits)
    ema = load_file(f"{to_hf(path, str(root / 'ema'), use_ema=True, fmt='native', say=quiet)}/model.safetensors")
    assert not torch.equal(ema["norm.weight"], model.norm.weight)


def test_llama_export_loads_in_transformers(ckpt):
    transformers = pytest.importorskip("transformers")
    path, root = ckpt
    out = to_hf(path, str(root / "hf"), say=quiet)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    x = torch.randint(5, 320, (2, 20))
    with torch.no_grad():
        assert (theirs(x).logits - tiny_model("clm", seed=3)(x).logits).abs().max() < 1e-4
    fast = transformers.AutoTokenizer.from_pretrained(out)
    assert fast.decode(fast.encode("To be, or not to be", add_special_tokens=False)) == "To be, or not to be"
    assert fast.pad_token is not None and fast.eos_token is not None


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "to_hf", str(tmp_path / "none.pth"),
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "checkpoint not found" in proc.stderr
