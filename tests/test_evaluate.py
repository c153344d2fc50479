"""evaluate.py: a checkpoint evaluated on a JSONL, text or processed .bin file, with figures checked
against a hand computation on the same windows, bit-for-bit repeatable, and bad inputs as one line."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate as ev
from data.samples.masking import MLMMasker
from data.tokenizer import train_tokenizer
from tests.helpers.tiny_models import LINES, save_checkpoint, tiny_model, tiny_tokenizer
from utils import IGNORE_INDEX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 64  # tiny_model's max_seq_len


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tok = tiny_tokenizer(str(root))
    clm, mlm = tiny_model("clm", seed=1), tiny_model("mlm", seed=2)
    texts = [f"{LINES[i % len(LINES)]} number {i}, and {LINES[(i * 3) % len(LINES)]}" for i in range(120)]
    jsonl = root / "eval.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            if i == 10:
                f.write("{not json\n")               # counted and skipped like the processor does
            if i == 20:
                f.write(json.dumps({"body": "x"}) + "\n")
    paragraphs = ["\n".join(texts[i:i + 3]) for i in range(0, 90, 3)]
    txt = root / "eval.txt"
    txt.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return {"root": root, "tok": tok, "clm": clm, "mlm": mlm, "texts": texts, "paragraphs": paragraphs,
            "jsonl": str(jsonl), "txt": str(txt),
            "clm_path": save_checkpoint(str(root / "clm"), clm, tok),
            "mlm_path": save_checkpoint(str(root / "mlm"), mlm, tok),
            "ema_path": save_checkpoint(str(root / "ema"), clm, tok, ema=True)}


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "evaluate.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def cli_json(*args):
    return json.loads(cli(*args, "--json").stdout)


def in_process(capsys, *args):
    code = ev.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def stream(tok, texts):
    return [t for text in texts for t in tok.frame(tok.encode(text))]


@torch.no_grad()
def causal_by_hand(model, tokens, n_windows=None, seq=SEQ):
    n = (len(tokens) - 1) // seq if n_windows is None else n_windows
    loss_sum, count = 0.0, 0
    for i in range(n):
        w = torch.tensor(tokens[i * seq:i * seq + seq + 1])
        logits = model(w[None, :-1]).logits[0]
        loss_sum += F.cross_entropy(logits.double(), w[1:], reduction="sum").item()
        count += seq
    return loss_sum / count, count, n


@pytest.mark.slow
def test_causal_jsonl_matches_hand_computation_and_repeats_to_the_bit(env):
    tok, texts = env["tok"], env["texts"]
    tokens = stream(tok, texts)
    loss, targets, n = causal_by_hand(env["clm"], tokens)
    runs = [subprocess.Popen([sys.executable, "evaluate.py", "--model_path", env["clm_path"], "--data", env["jsonl"],
                              "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outs = [r.communicate() for r in runs]
    assert all(r.returncode == 0 for r in runs), outs
    assert outs[0][0] == outs[1][0]  # the same JSON text: the same floats to the last bit
    r = json.loads(outs[0][0])
    assert r["objective"] == "clm" and r["weights"] == "model"
    assert r["documents"] == len(texts) and r["skipped"] == {"invalid_json": 1, "missing_field": 1}
    assert r["tokens"] == len(tokens) and r["windows"] == n and r["targets"] == targets
    assert abs(r["loss"] - loss) < 1e-5
    assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-12)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert r["text_bytes"] == n_bytes
    assert math.isclose(r["bits_per_byte"], r["loss"] / math.log(2) * len(tokens) / n_bytes, rel_tol=1e-12)


@pytest.mark.slow
def test_plain_text_is_one_document_per_paragraph(env):
    tokens = stream(env["tok"], env["paragraphs"])
    loss, targets, n = causal_by_hand(env["clm"], tokens)
    p = cli("--model_path", env["clm_path"], "--data", env["txt"])
    assert p.stderr.count("Traceback") == 0
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("model") and "causal LM, raw trained weights" in lines[0]
    assert f"{len(tokens):,} tokens from {len(env['paragraphs'])} documents" in lines[1]
    assert f"{n} of {n} ({SEQ + 1} tokens each), {targets:,} targets" in lines[2]
    shown = {line.split()[0]: float(line.split()[-1]) for line in lines[3:]}
    assert abs(shown["loss"] - loss) < 1e-4 and set(shown) == {"loss", "perplexity", "bits/byte"}


def test_max_batches_seq_len_and_weights_choice(env, capsys):
    tokens = stream(env["tok"], env["texts"])
    code, out, _ = in_process(capsys, "--model_path", env["clm_path"], "--data", env["jsonl"], "--max_batches", 2,
                              "--batch_size", 3, "--seq_len", 32, "--json")
    r = json.loads(out)
    loss, targets, n = causal_by_hand(env["clm"], tokens, n_windows=6, seq=32)
    assert code == 0 and r["windows"] == 6 and r["seq_len"] == 32 and r["targets"] == targets
    assert abs(r["loss"] - loss) < 1e-5
    # A checkpoint with EMA weights: the default is the ones the run evaluated (raw here), --ema the EMA.
    raw = json.loads(in_process(capsys, "--model_path", env["ema_path"], "--data", env["jsonl"], "--max_batches", 1,
                                "--json")[1])
    ema = json.loads(in_process(capsys, "--model_path", env["ema_path"], "--data", env["jsonl"], "--max_batches", 1,
                                "--ema", "--json")[1])
    assert raw["weights"] == "model" and ema["weights"] == "ema" and raw["loss"] != ema["loss"]


@pytest.mark.slow
def test_masked_model_fixed_masks_repeat_to_the_bit_and_match_by_hand(env, capsys):
    a = cli_json("--model_path", env["mlm_path"], "--data", env["jsonl"])
    b = cli_json("--model_path", env["mlm_path"], "--data", env["jsonl"])
    assert a == b and json.dumps(a) == json.dumps(b)
    assert a["objective"] == "mlm" and a["mask_rate"] == 0.15 and "bits_per_byte" not in a
    # By hand: window i masked by the generator training's evaluation seeds with (1234, i), 80/10/10.
    tok, model = env["tok"], env["mlm"]
    tokens = stream(tok, env["texts"])
    masker = MLMMasker(tok.mask_id, tok.special_ids, tok.vocab_size, 0.15, 0.8, 0.1)
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for i in range(len(tokens) // SEQ):
            g = torch.Generator()
            g.manual_seed((1234 * 1_000_003 + i) % (2**63))
            x, y = masker(torch.tensor(tokens[i * SEQ:(i + 1) * SEQ]), g)
            logits = model(x[None]).logits[0][y != IGNORE_INDEX]
            target = y[y != IGNORE_INDEX]
            loss_sum += F.cross_entropy(logits.double(), target, reduction="sum").item()
            correct += int((logits.argmax(-1) == target).sum())
            count += len(target)
    assert a["targets"] == count and abs(a["loss"] - loss_sum / count) < 1e-5
    assert a["accuracy"] == correct / count
    # Another rate, other masks: more targets.
    code, out, _ = in_process(capsys, "--model_path", env["mlm_path"], "--data", env["jsonl"], "--mask_rate", 0.3,
                              "--json")
    assert code == 0 and json.loads(out)["targets"] > a["targets"]


@pytest.mark.slow
def test_processed_bin_gives_the_same_figures_as_the_file_it_came_from(env, capsys):
    out_dir = env["root"] / "processed"
    p = subprocess.run([sys.executable, "-m", "data.processor", env["jsonl"], "--out_dir", str(out_dir), "--tokenizer",
                        os.path.join(env["root"], "clm", "tokenizer.json"), "--val_ratio", "0"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    from_bin = cli_json("--model_path", env["clm_path"], "--data", out_dir / "train.bin")
    code, out, _ = in_process(capsys, "--model_path", env["clm_path"], "--data", env["jsonl"], "--json")
    from_jsonl = json.loads(out)
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "targets", "windows", "text_bytes"):
        assert from_bin[key] == from_jsonl[key], key
    assert "documents" not in from_bin


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_bad_inputs_are_one_line_exit_2(env, capsys, tmp_path):
    p = cli("--model_path", env["clm_path"], "--data", tmp_path / "missing.jsonl", check=False)
    assert p.returncode == 2 and "not found" in one_error_line(p.stderr) and p.stdout == ""

    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "To be"}) + "\n", encoding="utf-8")
    n = len(stream(env["tok"], ["To be"]))
    code, out, err = in_process(capsys, "--model_path", env["clm_path"], "--data", short)
    assert code == 2 and out == ""
    assert f"holds {n} tokens; one window needs {SEQ + 1}" in one_error_line(err)

    code, _, err = in_process(capsys, "--model_path", tmp_path / "none.pth", "--data", env["jsonl"])
    assert code == 2 and "checkpoint not found" in one_error_line(err)

    code, _, err = in_process(capsys, "--model_path", env["clm_path"], "--data", env["jsonl"], "--seq_len", SEQ + 1)
    assert code == 2 and "longer than the model's context" in one_error_line(err)

    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text('{"body": "x"}\n', encoding="utf-8")
    code, _, err = in_process(capsys, "--model_path", env["clm_path"], "--data", nothing)
    assert code == 2 and "no usable document" in one_error_line(err)

    # A .bin made with another tokenizer is refused before anything is evaluated.
    other = train_tokenizer([env["jsonl"]], str(tmp_path / "other.json"), vocab_size=300)
    capsys.readouterr()
    out_dir = tmp_path / "other"
    from data.processor import main as process
    assert process([env["jsonl"], "--out_dir", str(out_dir), "--tokenizer", str(tmp_path / "other.json"),
                    "--val_ratio", "0"]) == 0
    assert other.fingerprint() != env["tok"].fingerprint()
    capsys.readouterr()
    code, out, err = in_process(capsys, "--model_path", env["clm_path"], "--data", out_dir / "train.bin")
    assert code == 2 and out == "" and "made with another tokenizer" in one_error_line(err)


def test_a_bin_whose_sidecar_lies_or_whose_ids_exceed_the_vocabulary_is_refused(env, capsys, tmp_path):
    """Before the checks both gave figures with exit 0 (or crashed mid-evaluation)."""
    tok_path = os.path.join(env["root"], "clm", "tokenizer.json")
    from data.processor import main as process
    for name in ("lie", "range"):
        assert process([env["jsonl"], "--out_dir", str(tmp_path / name), "--tokenizer", tok_path,
                        "--val_ratio", "0"]) == 0
    capsys.readouterr()
    lie = tmp_path / "lie" / "train.bin"
    meta = json.loads((tmp_path / "lie" / "train.bin.meta.json").read_text())
    even = meta["n_tokens"] - meta["n_tokens"] % 2
    with open(lie, "r+b") as f:
        f.truncate(even * 2)
    meta.update(dtype="uint32", n_tokens=even // 2)  # the size adds up; the dtype is a lie
    (tmp_path / "lie" / "train.bin.meta.json").write_text(json.dumps(meta))
    code, out, err = in_process(capsys, "--model_path", env["clm_path"], "--data", lie)
    assert code == 2 and out == "" and "does not describe" in one_error_line(err)

    beyond = tmp_path / "range" / "train.bin"
    tokens = np.fromfile(beyond, dtype="<u2")
    tokens[7] = env["tok"].vocab_size  # an id the tokenizer does not have (the model's padded rows do)
    tokens.tofile(beyond)
    code, out, err = in_process(capsys, "--model_path", env["clm_path"], "--data", beyond)
    assert code == 2 and out == "" and f"holds token id {env['tok'].vocab_size}, beyond" in one_error_line(err)
