"""The byte-level BPE tokenizer: exact round trips for any text, fixed special ids, save/load."""
import json
import random

import pytest

from data.errors import DataError
from data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

TEXTS = ["To be, or not to be, that is the question.", "今天心情很好", "emoji 🎭👑🗡️ and ZWJ 👨‍👩‍👧",
         "mixed: Ünïcödé, Ελληνικά, русский, العربية, 日本語かな", "tabs\tand\nnew\r\nlines  double  spaces ",
         "control \x01\x02\x1b[0m chars \x7f", " leading space", "trailing space ", "", "<mask> <s> literal"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "c.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"The king speaks to the queen {i}. 今天心情很好 {TEXTS[i % 6]}"}) + "\n")
    return train_tokenizer([str(corpus)], str(root / "tokenizer.json"), vocab_size=400)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_round_trip_of_random_unicode(tok):
    """Any code point (bar the surrogates, which no valid str-to-UTF-8 text holds), NUL included."""
    rng = random.Random(0)
    planes = [(0, 0x80), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x110000)]
    for _ in range(200):
        text = "".join(chr(rng.randrange(*rng.choice(planes))) for _ in range(rng.randint(1, 40)))
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_decode_bytes_lets_a_stream_hold_back_partial_characters(tok):
    """Token by token, some pieces are not whole UTF-8 characters (a 4-byte character the training text
    never had is four byte tokens); joined, the bytes are the text."""
    text = "clef 𝄞 here"
    pieces = [tok.decode_bytes([i]) for i in tok.encode(text)]
    assert b"".join(pieces) == text.encode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        [p.decode("utf-8") for p in pieces]


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.special_ids == [0, 1, 2, 3, 4] and tok.mask_token == SPECIAL_TOKENS["mask"]
    assert tok.encode("hi", add_bos=True, add_eos=True)[0] == 1 and tok.encode("hi", add_eos=True)[-1] == 2
    assert tok.encode("<mask>") == [tok.mask_id]  # the literal mask token maps to its id (fill-mask relies on it)


def test_trained_size_and_batch_encode(tok):
    assert tok.vocab_size == 400
    assert tok.encode_batch(TEXTS[:3]) == [tok.encode(t) for t in TEXTS[:3]]


def test_save_load_keeps_fingerprint(tok, tmp_path):
    tok.save(str(tmp_path / "t.json"))
    again = load_tokenizer(str(tmp_path / "t.json"))
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_too_small_vocabulary_is_refused(tmp_path):
    with pytest.raises(DataError, match="vocab_size must be at least 261"):
        train_tokenizer([str(tmp_path / "unused.jsonl")], str(tmp_path / "t.json"), vocab_size=200)


def test_bad_tokenizer_paths_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a tokenizers JSON file"):
        load_tokenizer(str(tmp_path / "bad.json"))
