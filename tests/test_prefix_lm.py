"""Prefix LM (model.objective plm): bidirectional inside the prefix, causal after it, loss only on the
suffix, prefixes drawn as a pure function of the sample position, and generation that reads the
prompt as the prefix and decodes with the KV cache exactly as the full forward pass computes."""
import numpy as np
import pytest
import torch

from data.samples.windows import PrefixWindows, SampleOrder
from data.samples.documents import DocumentIndex, draw_prefix, suffix_labels
from model import LMConfig, Transformer
from model.generation import GenerationConfig, generate_tokens
from tests.helpers.data_fixtures import FakeBin
from training.batches import collate, fetch, make_windows

SMALL = dict(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48, objective="plm")


def make(**kw):
    torch.manual_seed(0)
    return Transformer(LMConfig(**{**SMALL, **kw})).eval()


def prefix_of(batch, length, total):
    in_prefix = torch.zeros(batch, total, dtype=torch.bool)
    in_prefix[:, :length] = True
    return in_prefix


def changed(a, b):
    """Per position: does any hidden unit differ?"""
    return ((a - b).abs().amax(-1) > 0)


def test_prefix_is_bidirectional_and_the_rest_causal():
    m = make()
    x = torch.randint(5, 211, (2, 20))
    in_prefix = prefix_of(2, 8, 20)
    base = m.hidden_states(x, in_prefix=in_prefix)
    later_prefix = x.clone()
    later_prefix[:, 7] = (x[:, 7] + 1) % 200 + 5          # the prefix's last token
    moved = changed(base, m.hidden_states(later_prefix, in_prefix=in_prefix))
    assert moved[:, :8].all() and moved[:, 8:].all()        # every earlier prefix token sees it
    for t in range(8, 20):                                  # a suffix token: nothing before it moves
        suffix = x.clone()
        suffix[:, t] = (x[:, t] + 1) % 200 + 5
        moved = changed(base, m.hidden_states(suffix, in_prefix=in_prefix))
        assert not moved[:, :t].any() and moved[:, t].all()


def test_no_prefix_is_the_causal_model():
    m = make()
    x = torch.randint(5, 211, (2, 20))
    assert torch.equal(m(x).logits, m(x, in_prefix=prefix_of(2, 0, 20)).logits)
    clm = make(objective="clm")
    assert torch.equal(clm(x).logits, m(x).logits)          # same weights, same causal forward


def test_masked_model_refuses_a_prefix():
    with pytest.raises(ValueError, match="in_prefix"):
        make(objective="mlm")(torch.randint(5, 211, (1, 8)), in_prefix=prefix_of(1, 3, 8))


def test_loss_positions_are_exactly_the_suffix():
    documents = torch.tensor([0] * 10 + [1] * 6)             # two document pieces in a 16-token window
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        in_prefix = draw_prefix(documents, g)
        first, second = int(in_prefix[:10].sum()), int(in_prefix[10:].sum())
        assert in_prefix[:first].all() and in_prefix[10:10 + second].all()   # each prefix leads its piece
        assert first <= 9 and second <= 5                                    # a target is always left
        labels = torch.arange(100, 116)                                      # labels[t] is token t + 1
        kept = suffix_labels(labels, in_prefix) != -100
        target_in_prefix = torch.cat([in_prefix[1:], torch.tensor([False])])
        assert torch.equal(kept, ~target_in_prefix)


def test_prefix_lengths_cover_the_range():
    g = torch.Generator().manual_seed(0)
    lengths = {int(draw_prefix(torch.zeros(8, dtype=torch.long), g).sum()) for _ in range(400)}
    assert lengths == set(range(8))


def test_windows_draw_prefixes_from_the_sample_position():
    tokens = np.random.default_rng(0).integers(5, 200, 400)
    windows = make_windows(FakeBin(tokens, [0, 400]), 16, "plm")
    assert isinstance(windows, PrefixWindows)
    a, b = fetch(windows, 3, seed=7, position=11), fetch(windows, 3, seed=7, position=11)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["input_ids"], torch.from_numpy(tokens[48:64].astype(np.int64)))
    drawn = {int(fetch(windows, 3, seed=7, position=p)["in_prefix"].sum()) for p in range(40)}
    assert len(drawn) > 5                                   # the position, not the window, seeds the draw
    prefix = int(a["in_prefix"].sum())
    assert a["in_prefix"][:prefix].all()
    expected = torch.from_numpy(tokens[49:65].astype(np.int64))
    expected[:max(0, prefix - 1)] = -100                    # targets inside the prefix carry no loss
    assert torch.equal(a["labels"], expected)
    batch = collate(windows, SampleOrder(len(windows), 7), [0, 1, 2], 7, torch.device("cpu"))
    assert set(batch.fields) == {"in_prefix"} and batch.fields["in_prefix"].shape == (3, 16)
    assert batch.n_targets == int((batch.labels != -100).sum())


def test_packed_prefix_windows_give_each_document_its_own_prefix():
    tokens = np.arange(5, 45)
    windows = make_windows(FakeBin(tokens, [0, 12, 30, 40]), 16, "plm", document_mask=True)
    sample = fetch(windows, 0, seed=1, position=0)
    assert sample["document_ids"].tolist() == [0] * 12 + [1] * 4
    assert isinstance(windows.documents, DocumentIndex)


def test_cached_decoding_equals_full_forward_with_left_padding():
    """Each prompt is the bidirectional prefix; prefill + one token at a time equals one forward pass
    over prompt + continuation with that prefix."""
    m = make()
    prompts = [torch.randint(5, 211, (n,)) for n in (5, 11, 8)]
    new = 9
    width = max(len(p) for p in prompts)
    ids = torch.zeros(3, width + new, dtype=torch.long)
    mask = torch.zeros(3, width + new, dtype=torch.long)
    in_prefix = torch.zeros(3, width + new, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):width] = p
        ids[i, width:] = torch.randint(5, 211, (new,))
        mask[i, width - len(p):] = 1
        in_prefix[i, width - len(p):width] = True
    full = m(ids, attention_mask=mask, in_prefix=in_prefix).logits
    cache = m.new_cache(3, width + new)
    steps = [m(ids[:, :width], attention_mask=mask[:, :width], cache=cache, in_prefix=in_prefix[:, :width]).logits]
    for t in range(width, width + new):
        steps.append(m(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
    stepped = torch.cat(steps, dim=1)
    real = mask.bool()
    assert (stepped[real] - full[real]).abs().max() < 1e-4
    for i, p in enumerate(prompts):                        # a padded row equals its sequence alone
        alone_ids = ids[i, width - len(p):][None]
        alone = m(alone_ids, in_prefix=in_prefix[i, width - len(p):][None]).logits[0]
        assert (full[i, width - len(p):] - alone).abs().max() < 1e-4


def test_generation_reads_the_prompt_as_the_prefix():
    m = make()
    prompts = [[7, 9, 11, 13, 15], [20, 21, 22]]
    cfg = GenerationConfig(do_sample=False, max_new_tokens=6, stop_on_eos=False)
    out = generate_tokens(m, prompts, cfg, eos_id=2)
    for prompt, tokens in zip(prompts, out):                # no cache, full forward each step
        seq = list(prompt)
        for _ in range(6):
            in_prefix = torch.tensor([[i < len(prompt) for i in range(len(seq))]])
            seq.append(int(m(torch.tensor([seq]), in_prefix=in_prefix).logits[0, -1].argmax()))
        assert tokens == seq[len(prompt):]
    prompt = torch.tensor([prompts[0]])                     # and the prefix does change what comes next
    as_prefix = m(prompt, in_prefix=torch.ones_like(prompt, dtype=torch.bool)).logits[0, -1]
    assert (as_prefix - m(prompt).logits[0, -1]).abs().max() > 1e-4


def test_config_accepts_plm_and_validates_document_mask():
    assert LMConfig(objective="plm").causal
    with pytest.raises(ValueError, match="model.document_mask"):
        LMConfig(document_mask="yes")
    with pytest.raises(ValueError, match="model.objective"):
        LMConfig(objective="prefix")


@torch.no_grad()
def test_evaluate_scores_a_packed_prefix_lm_on_its_suffixes(tmp_path, capsys):
    """evaluate.py on a JSONL file: each window's documents and prefixes as training's validation
    draws them (fixed seed, the window's index as position), loss only after each prefix."""
    import json

    import evaluate as ev
    from tests.helpers.tiny_models import LINES, save_checkpoint, tiny_tokenizer
    from training.batches import EVAL_SEED, _sample_generator

    tok = tiny_tokenizer(str(tmp_path))
    torch.manual_seed(1)
    model = Transformer(LMConfig(vocab_size=320, dim=48, n_layers=2, n_heads=4, max_seq_len=64, objective="plm",
                                 document_mask=True)).eval()
    path = save_checkpoint(str(tmp_path / "plm"), model, tok)
    texts = [f"{LINES[i % len(LINES)]} {i}" for i in range(40)]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert ev.main(["--model_path", path, "--data", str(data), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)

    docs = [tok.frame(tok.encode(t)) for t in texts]
    tokens = torch.tensor([t for d in docs for t in d])
    index = DocumentIndex(np.cumsum([0] + [len(d) for d in docs]))
    loss_sum, count = 0.0, 0
    for i in range((len(tokens) - 1) // 64):
        x, y = tokens[i * 64:i * 64 + 64], tokens[i * 64 + 1:i * 64 + 65]
        document_ids = index.ids(i * 64, 64)
        in_prefix = draw_prefix(document_ids, _sample_generator(EVAL_SEED, i))
        logits = model(x[None], document_ids=document_ids[None], in_prefix=in_prefix[None]).logits[0]
        keep = suffix_labels(y, in_prefix) != -100
        loss_sum += torch.nn.functional.cross_entropy(logits[keep].double(), y[keep], reduction="sum").item()
        count += int(keep.sum())
    assert r["objective"] == "plm" and r["targets"] == count < r["windows"] * 64
    assert abs(r["loss"] - loss_sum / count) < 1e-5 and "bits_per_byte" in r


def test_init_from_a_causal_checkpoint_continues_as_a_packed_prefix_lm(tmp_path):
    from model.config import ConfigError
    from tests.helpers.tiny_models import save_checkpoint, tiny_model, tiny_tokenizer
    from training.init_from import InitSource

    path = save_checkpoint(str(tmp_path / "clm"), tiny_model("clm"), tiny_tokenizer(str(tmp_path)))
    source = InitSource(path, say=lambda line: None)
    settings = source.model_settings({"objective": "plm", "document_mask": True}, {"objective", "document_mask"})
    assert settings["objective"] == "plm" and settings["document_mask"] is True
    assert settings["dim"] == source.model_config["dim"]
    with pytest.raises(ConfigError, match="model.objective='mlm'"):
        source.model_settings({"objective": "mlm"}, {"objective"})
