"""Byte-level BPE tokenizer trained with the `tokenizers` library.

Byte-level means every string maps to tokens and back exactly (any language, emoji, control
characters): no normaliser, no prefix space, and a byte-level decoder."""
import hashlib
import json
import os

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from data.errors import DataError
from data.jsonl import iter_texts

# Fixed ids 0..4, so masks and padding never depend on the corpus.
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


class Tokenizer:
    def __init__(self, backend: BackendTokenizer):
        self.backend = backend
        ids = {}
        for role, token in SPECIAL_TOKENS.items():
            tid = backend.token_to_id(token)
            if tid is None:
                raise DataError(f"tokenizer has no {token} token (needed as {role})")
            ids[role] = tid
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        self.mask_token = SPECIAL_TOKENS["mask"]
        added = [i for i, t in backend.get_added_tokens_decoder().items() if t.special]
        self.special_ids = sorted(set(ids.values()) | set(added))
        # byte-level alphabet: token string -> bytes, for decode_bytes
        self._byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
        self._vocab = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts) -> list:
        """Token ids of many texts, encoded in parallel (the fast variant skips character offsets,
        which we never use: less time and far less memory per token)."""
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of the tokens (special tokens as their text), so a stream can hold back
        a multi-byte character until all of its bytes have arrived."""
        out = bytearray()
        for i in ids:
            token = self._vocab.get(int(i), "")
            if int(i) in self.special_ids:
                out += token.encode("utf-8")
            else:
                out += bytes(self._byte_decoder[ch] for ch in token)
        return bytes(out)

    def fingerprint(self) -> str:
        canonical = json.dumps(json.loads(self.backend.to_str()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        self.backend.save(tmp)
        os.replace(tmp, path)


def _bytes_to_unicode() -> dict:
    """The byte -> printable character table that byte-level BPE uses (GPT-2's alphabet)."""
    return dict(zip(range(256), _alphabet()))


def _alphabet() -> list:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens, before any merge


def train_tokenizer(files, out_path: str, vocab_size: int = 4096, text_field: str = "text") -> Tokenizer:
    if not MIN_VOCAB <= vocab_size <= 2**32 - 1:
        raise DataError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special "
                        f"tokens), got {vocab_size}")
    backend = BackendTokenizer(models.BPE(unk_token=None, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True,
                                  min_frequency=2)
    backend.train_from_iterator(iter_texts(files, text_field), trainer=trainer)
    tok = Tokenizer(backend)
    tok.save(out_path)
    return tok


def load_tokenizer(path: str) -> Tokenizer:
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise DataError(f"tokenizer not found: {path}")
    try:
        backend = BackendTokenizer.from_file(path)
    except Exception as e:
        raise DataError(f"{path} is not a tokenizers JSON file ({str(e).splitlines()[0][:100]})")
    return Tokenizer(backend)
