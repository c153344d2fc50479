"""Where words start in a token sequence, for whole-word masking.

From the vocabulary alone (tables built once per tokenizer): a WordPiece `##` piece continues the
word before it; for byte-level BPE and sentencepiece pieces, a piece continues the word when it
begins inside a word (a letter or digit with no space before it, or the middle of a multi-byte
character) and the piece before it ends inside one. Special tokens are words of their own.

Chinese is written without spaces, so the vocabulary cannot tell its words apart (BERT makes every
character a word, byte-level BPE a whole run of characters). Next to Han characters the boundaries
come from the jieba segmenter (rjieba, its Rust port) run over the document's text, rebuilt from its
tokens: the result is a pure function of the token ids, so it can be computed from a finished .bin."""
from operator import itemgetter

import numpy as np

from data.errors import DataError

SEGMENTER = "rjieba==0.2.2"  # recorded with every word-start file: another segmenter, other words


def _is_han(codepoints: np.ndarray) -> np.ndarray:
    c = codepoints
    return ((c >= 0x4E00) & (c <= 0x9FFF)) | ((c >= 0x3400) & (c <= 0x4DBF)) | \
        ((c >= 0xF900) & (c <= 0xFAFF)) | ((c >= 0x20000) & (c <= 0x3FFFF))


def _han(ch: str) -> bool:
    c = ord(ch)
    return 0x4E00 <= c <= 0x9FFF or 0x3400 <= c <= 0x4DBF or 0xF900 <= c <= 0xFAFF or 0x20000 <= c <= 0x3FFFF


def _split_utf8(piece: bytes):
    """(text of the piece's whole characters, starts mid-character, ends mid-character)."""
    if not piece:
        return "", False, False
    starts_mid = (piece[0] & 0xC0) == 0x80
    end = len(piece)
    for back in range(1, min(4, len(piece)) + 1):  # a trailing lead byte whose sequence is cut off
        b = piece[-back]
        if (b & 0xC0) != 0x80:
            need = 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
            if need > back:
                end = len(piece) - back
            break
    return piece[:end].decode("utf-8", errors="ignore"), starts_mid, end < len(piece)


def _segmenter():
    try:
        import rjieba
    except ImportError:
        raise DataError(f"Chinese word boundaries need the jieba segmenter: pip install {SEGMENTER}") from None
    return rjieba


class WordBoundaries:
    """Per-token-id tables of one tokenizer, and word starts computed from them."""

    def __init__(self, tokenizer):
        n = tokenizer.vocab_size
        self.wordpiece = type(tokenizer.backend.model).__name__ == "WordPiece"
        special = np.zeros(n, bool)
        special[tokenizer.special_ids] = True
        self.special = special
        self.begins_inside = np.zeros(n, bool)  # may continue the word of the piece before
        self.ends_inside = np.zeros(n, bool)    # may be continued by the piece after
        self.maybe_han = np.zeros(n, bool)      # may hold (part of) a Han character
        self.han_first = np.zeros(n, bool)
        self.han_last = np.zeros(n, bool)
        # The piece's bytes in running text: pieces[2 * id] as decoded, pieces[2 * id + 1] without a
        # leading space (a BERT piece inside a run of Chinese characters); a special token separates
        # text like a line break, so no word spans it and documents segment independently.
        pieces = [b"\n"] * (2 * n)
        for i in range(n):
            if special[i]:
                continue
            piece = tokenizer.decode_bytes([i])
            pieces[2 * i], pieces[2 * i + 1] = piece, piece[1:] if piece.startswith(b" ") else piece
            text, starts_mid, ends_mid = _split_utf8(piece)
            if self.wordpiece:  # decode_bytes puts a space before every piece that is not `##`
                self.begins_inside[i] = not piece.startswith(b" ")
                self.ends_inside[i] = True
            else:
                # a piece cut inside a character is inside a word (the character is most likely a letter)
                self.begins_inside[i] = starts_mid or (text[0].isalnum() if text else ends_mid)
                self.ends_inside[i] = ends_mid or (text[-1].isalnum() if text else starts_mid)
            core = text.lstrip(" ")
            self.han_first[i] = bool(core) and _han(core[0])
            self.han_last[i] = bool(text) and _han(text[-1])
            self.maybe_han[i] = starts_mid or ends_mid or any(_han(ch) for ch in text)
        self.pieces = pieces
        self.piece_len = np.array([len(p) for p in pieces], np.int64)
        self.lead_space = np.array([p.startswith(b" ") for p in pieces[0::2]], bool)

    def vocab_starts(self, ids: np.ndarray, prev_id=None) -> np.ndarray:
        """Word starts from the tables alone; prev_id is the token before ids[0] (None: a start)."""
        ids = np.asarray(ids, dtype=np.int64)
        before = np.empty_like(ids)
        before[1:] = ids[:-1]
        if len(ids):
            before[0] = ids[0] if prev_id is None else prev_id
        starts = ~(self.begins_inside[ids] & self.ends_inside[before])
        if len(ids) and prev_id is None:
            starts[0] = True
        return starts

    def document_starts(self, ids: np.ndarray) -> np.ndarray:
        """Word starts of one whole document; around Han characters they are jieba's word starts."""
        ids = np.asarray(ids, dtype=np.int64)
        starts = self.vocab_starts(ids)
        if not len(ids) or not self.maybe_han[ids].any():
            return starts
        which = 2 * ids
        if self.wordpiece:  # BERT writes a space before each Chinese character: join runs of them again
            which[1:] += self.han_first[ids[1:]] & self.han_last[ids[:-1]]
        raw = b"".join(itemgetter(*which.tolist())(self.pieces)) if len(ids) > 1 else self.pieces[which[0]]
        lengths = self.piece_len[which]
        first_byte = np.cumsum(lengths) - lengths
        data = np.frombuffer(raw, np.uint8)
        lead = (data & 0xC0) != 0x80
        text = raw.decode("utf-8", errors="replace")
        if int(lead.sum()) != len(text):  # not valid UTF-8 as a whole: keep the vocabulary's answer
            return starts
        char_of_byte = np.cumsum(lead) - 1
        codepoints = np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.int64)
        han = _is_han(codepoints)
        word_lengths = np.fromiter(map(len, _segmenter().cut(text)), np.int64)
        jieba_start = np.zeros(len(text) + 1, bool)
        jieba_start[np.cumsum(word_lengths) - word_lengths] = True
        if self.wordpiece:  # the piece's own text begins after its space
            first_byte += (which % 2 == 0) & self.lead_space[ids]
        has_text = (lengths > 0) & (first_byte < len(raw)) & ~self.special[ids]
        at = np.minimum(first_byte, max(len(raw) - 1, 0))
        char = char_of_byte[at]
        near_han = han[char] | ((char > 0) & han[np.maximum(char - 1, 0)])
        decide = has_text & near_han
        starts[decide] = lead[at[decide]] & jieba_start[char[decide]]
        starts[self.special[ids]] = True
        starts[1:] |= self.special[ids[:-1]]
        return starts
