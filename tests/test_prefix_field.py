"""Prompt/completion corpora (data.prefix_field): the processor stores a record's prompt and text as one
document (the tokenizer learns from both) and records where the prompt ends; a packed prefix LM then
takes each document's prompt as its bidirectional prefix and its loss counts only the completions."""
import json
import os
import random

import numpy as np
import pytest
import torch

from data.samples.documents import DocumentIndex
from data.errors import DataError
from data.samples.prefix_split import prefix_lengths, prefix_path
from data.build.prepare import prepare_corpus
from data.sources.settings import ReadSettings
from data.samples.token_bin import TokenBin
from data.tokenizer import load_tokenizer, train_tokenizer
from tests.helpers.data_fixtures import FakeBin
from tests.helpers.train_harness import WORDS, read_metrics, run, run_ok, train_cmd, write_config
from training.batches import fetch, make_windows


def write_pairs(path, n=80, seed=0):
    """Question/answer records; a few are rejected (no prompt, a prompt that is not a string), one
    prompt ends inside a word its completion finishes ("...ki" + "ng ..."), so the tokenizer may
    merge across the seam."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        prompt = "Q: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "?\nA:"
        answer = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "."
        records.append({"prompt": prompt, "text": answer})
    records[5] = {"prompt": "Q: who is the ki", "text": "ng of the world?"}
    records[7] = {"text": "no prompt here"}
    records[9] = {"prompt": ["not", "a", "string"], "text": "x"}
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return [r for r in records if isinstance(r.get("prompt"), str)]


def test_processor_records_where_each_prompt_ends(tmp_path):
    kept = write_pairs(tmp_path / "qa.jsonl")
    paths = prepare_corpus([str(tmp_path / "qa.jsonl")], str(tmp_path / "d"), vocab_size=300, val_ratio=0.2,
                           read=ReadSettings(prefix_field="prompt"))
    tok = load_tokenizer(paths["tokenizer"])
    stats = json.load(open(paths["stats"]))["statistics"]
    assert stats["documents_kept"] == len(kept) and stats["rejected"]["missing_field"] == 1
    assert stats["rejected"]["non_string"] == 1
    seen, merged = [], 0
    for split in ("train_bin", "val_bin"):
        token_bin = TokenBin(paths[split])
        offsets, lengths = token_bin.doc_offsets(), prefix_lengths(paths[split], "prompt")
        assert len(lengths) == token_bin.meta["n_docs"] > 0
        for j, length in enumerate(lengths):
            doc = token_bin.tokens[offsets[j]:offsets[j + 1]].tolist()
            text = tok.decode(doc[:-1])                   # prompt + completion, then eos
            seen.append(text)
            prompt = next(r["prompt"] for r in kept if r["prompt"] + r["text"] == text)
            assert prompt.startswith(tok.decode(doc[:length]))
            if doc[:len(tok.encode(prompt))] == tok.encode(prompt):   # no token across the seam
                assert tok.decode(doc[:length]) == prompt
            else:                                         # the merged token counts as completion
                assert length < len(tok.encode(prompt))
                merged += 1
    assert sorted(seen) == sorted(r["prompt"] + r["text"] for r in kept) and merged >= 1  # "...ki" + "ng"
    # the tokenizer was trained on whole documents, prompts included: they take fewer tokens than with
    # a tokenizer trained on the completions alone
    completions_only = train_tokenizer([str(tmp_path / "qa.jsonl")], str(tmp_path / "c.json"), vocab_size=300,
                                       say=lambda *a: None)
    assert sum(len(tok.encode(r["prompt"])) for r in kept) < \
        sum(len(completions_only.encode(r["prompt"])) for r in kept)
    # a second call finds everything up to date and rewrites nothing
    before = os.stat(prefix_path(paths["train_bin"])).st_mtime_ns
    prepare_corpus([str(tmp_path / "qa.jsonl")], str(tmp_path / "d"), vocab_size=300, val_ratio=0.2,
                   read=ReadSettings(prefix_field="prompt"))
    assert os.stat(prefix_path(paths["train_bin"])).st_mtime_ns == before


def test_missing_or_other_field_prompt_lengths_are_one_line(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": f"a b c {i}"}) + "\n" for i in range(50)))
    paths = prepare_corpus([str(tmp_path / "c.jsonl")], str(tmp_path / "d"), vocab_size=280, val_ratio=0.0)
    with pytest.raises(DataError, match="--prefix_field prompt"):
        prefix_lengths(paths["train_bin"], "prompt")


def test_windows_take_each_documents_prompt_as_its_prefix():
    offsets = [0, 10, 17, 40]                            # documents of 10, 7 and 23 tokens
    prompts = np.array([4, 6, 12])                        # their prompts, in tokens
    fake = FakeBin(np.arange(5, 45), offsets)
    windows = make_windows(fake, 16, "plm", document_mask=True, prompt_lengths=prompts)
    for i in range(len(windows)):
        a, b = fetch(windows, i, seed=0, position=i), fetch(windows, i, seed=0, position=i + 99)
        assert torch.equal(a["in_prefix"], b["in_prefix"])               # nothing drawn
        tokens = np.arange(i * 16, i * 16 + 17)
        docs = DocumentIndex(offsets).ids(i * 16, 17).numpy()
        in_prompt = tokens - np.asarray(offsets)[docs] < prompts[docs]
        assert a["in_prefix"].tolist() == in_prompt[:-1].tolist()
        assert (a["labels"] == -100).tolist() == in_prompt[1:].tolist()  # targets inside a prompt: no loss


@pytest.mark.slow
def test_train_py_learns_completions_of_a_prompt_corpus(tmp_path):
    write_pairs(tmp_path / "qa.jsonl", n=200)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "qa.jsonl"), str(tmp_path / "d"), out, objective="plm",
                       max_steps=4, eval_interval=2, save_interval=4)
    run_ok(train_cmd("--config", cfg, "--model.document_mask", "true", "--data.prefix_field", "prompt"))
    evals = read_metrics(str(out / "run"), "eval")
    assert [r["step"] for r in evals] == [2, 4] and all(r["val_bpb"] > 0 for r in evals)
    refused = run(train_cmd("--config", cfg, "--data.prefix_field", "prompt", "--run_name", "r2"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].endswith("model.objective plm and model.document_mask true")


@torch.no_grad()
def test_evaluate_takes_each_prompt_as_the_prefix(tmp_path, capsys):
    """evaluate.py --prefix_field on the JSONL and on its processed .bin: the same figures, equal to a
    hand computation where exactly the completions (and each eos) are scored."""
    import evaluate as ev
    from model import LMConfig, Transformer
    from tests.helpers.tiny_models import save_checkpoint, tiny_tokenizer

    tok = tiny_tokenizer(str(tmp_path))
    torch.manual_seed(3)
    model = Transformer(LMConfig(vocab_size=320, dim=48, n_layers=2, n_heads=4, max_seq_len=64, objective="plm",
                                 document_mask=True)).eval()
    path = save_checkpoint(str(tmp_path / "plm"), model, tok)
    records = [r for r in write_pairs(tmp_path / "qa.jsonl", n=60) if r["text"].startswith(" ")]
    with open(tmp_path / "qa.jsonl", "w", encoding="utf-8") as f:  # prompts end in "A:", completions start a word
        f.writelines(json.dumps(r) + "\n" for r in records)
    bins = prepare_corpus([str(tmp_path / "qa.jsonl")], str(tmp_path / "d"), val_ratio=0.0,
                          read=ReadSettings(prefix_field="prompt"), tokenizer_path=str(tmp_path / "tokenizer.json"))
    capsys.readouterr()                                   # the processor's summary
    results = []
    for data in (tmp_path / "qa.jsonl", bins["train_bin"]):
        assert ev.main(["--model_path", path, "--data", str(data), "--prefix_field", "prompt", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))

    docs = [tok.encode(r["prompt"] + r["text"]) + [tok.eos_id] for r in records]
    prompts = [len(tok.encode(r["prompt"])) for r in records]
    assert all(d[:p] == tok.encode(r["prompt"]) for d, p, r in zip(docs, prompts, records))
    tokens = torch.tensor([t for d in docs for t in d])
    doc_of = torch.tensor([k for k, d in enumerate(docs) for _ in d])
    start_of = torch.tensor([sum(len(d) for d in docs[:k]) for k in range(len(docs))])
    in_prompt = torch.arange(len(tokens)) - start_of[doc_of] < torch.tensor(prompts)[doc_of]
    loss_sum, count = 0.0, 0
    for i in range((len(tokens) - 1) // 64):
        span = slice(i * 64, i * 64 + 64)
        x, y = tokens[span], tokens[i * 64 + 1:i * 64 + 65]
        logits = model(x[None], document_ids=doc_of[span][None], in_prefix=in_prompt[span][None]).logits[0]
        scored = ~in_prompt[i * 64 + 1:i * 64 + 65]
        loss_sum += torch.nn.functional.cross_entropy(logits[scored].double(), y[scored], reduction="sum").item()
        count += int(scored.sum())
    for r in results:
        assert r["targets"] == count and abs(r["loss"] - loss_sum / count) < 1e-5
    assert results[0]["loss"] == results[1]["loss"]
    code = ev.main(["--model_path", save_checkpoint(str(tmp_path / "clm"), Transformer(LMConfig(
        vocab_size=320, dim=48, n_layers=2, n_heads=4, max_seq_len=64)), tok), "--data", str(tmp_path / "qa.jsonl"),
        "--prefix_field", "prompt"])
    assert code == 2 and "packed prefix LM" in capsys.readouterr().err
