"""Byte-level BPE tokenizer trained with the `tokenizers` library.

Byte-level means every string maps to tokens and back exactly (any language, emoji, control
characters): no normaliser, no prefix space, and a byte-level decoder."""
import hashlib
import json
import re
import sys

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from data.errors import DataError
from data.hf_tokenizer import read_tokenizer_files
from data.sources.inputs import expand_inputs
from data.sources.settings import DEFAULT_READ, ReadSettings
from data.sources.records import iter_records, nothing_usable
from utils import atomic_write

# Fixed ids 0..4, so masks and padding never depend on the corpus.
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


class Tokenizer:
    """A `tokenizers` backend plus the roles of its special tokens.

    roles: role (pad, bos, eos, unk, mask) -> token string, or None where the tokenizer has none
    (GPT-2 has no pad or mask; a pad-less tokenizer pads with eos). Default: this project's fixed
    SPECIAL_TOKENS. framing: how a document is stored for training: "eos" (text then eos, the
    decoders' way) or "cls_sep" (bos/[CLS], text, eos/[SEP], BERT's way)."""

    def __init__(self, backend: BackendTokenizer, roles=None, framing: str = "eos"):
        self.backend = backend
        self.roles = dict(SPECIAL_TOKENS if roles is None else roles)
        if framing not in FRAMINGS:
            raise DataError(f"unknown document framing {framing!r}; one of {', '.join(FRAMINGS)}")
        self.framing = framing
        ids = {}
        for role in SPECIAL_TOKENS:
            token = self.roles.get(role)
            tid = None if token is None else backend.token_to_id(token)
            if token is not None and tid is None:
                raise DataError(f"tokenizer has no {token} token (needed as {role})")
            ids[role] = tid
        if ids["eos"] is None:
            raise DataError("tokenizer has no end-of-document token (eos_token / sep_token): documents could not "
                            "be separated")
        if ids["pad"] is None:  # decoders often have none: padding positions are masked out anyway
            ids["pad"] = ids["eos"]
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        self.mask_token = self.roles.get("mask")
        added = [i for i, t in backend.get_added_tokens_decoder().items() if t.special]
        self.special_ids = sorted({i for i in ids.values() if i is not None} | set(added))
        self._vocab = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
        self._piece_bytes = _piece_decoder(backend)

    @property
    def is_default(self) -> bool:
        """Whether roles and framing are this project's own (then the files need no sidecar)."""
        return self.roles == SPECIAL_TOKENS and self.framing == "eos"

    @property
    def start_id(self) -> int:
        """The token a document's text follows in training, so the one to feed before an empty
        prompt (and to declare as bos on export). Our own tokenizer frames documents by eos alone:
        the next one starts after an eos, and its <s> never reaches the model. cls_sep documents
        start with bos ([CLS]); an imported tokenizer's bos is the one its model learnt with."""
        if self.bos_id is None or (self.framing == "eos" and self.roles == SPECIAL_TOKENS):
            return self.eos_id
        return self.bos_id

    def frame(self, ids: list) -> list:
        """A document's ids as stored for training."""
        if self.framing == "cls_sep" and self.bos_id is not None:
            return [self.bos_id, *ids, self.eos_id]
        return [*ids, self.eos_id]

    def roles_state(self) -> dict:
        """Roles and framing as plain data, for a checkpoint."""
        return {"roles": dict(self.roles), "framing": self.framing}

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
            out += token.encode("utf-8") if int(i) in self.special_ids else self._piece_bytes(token)
        return bytes(out)

    def fingerprint(self) -> str:
        canonical = json.loads(self.backend.to_str())
        if not self.is_default:  # the roles decide masks and framing: another role, another tokenizer
            canonical = {"backend": canonical, **self.roles_state()}
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def save(self, path: str) -> None:
        atomic_write(path, lambda f: f.write(self.backend.to_str(pretty=True)), binary=False)


FRAMINGS = ("eos", "cls_sep")


def _piece_decoder(backend):
    """token string -> its bytes in running text, by the kind of decoder the tokenizer uses:
    byte-level BPE (GPT-2, Qwen2, ours), sentencepiece-style metaspace with byte fallback (Llama),
    or WordPiece (BERT)."""
    kind = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {d.get("type") for d in kind.get("decoders", [kind])}
    if "ByteLevel" in kinds:
        table = {ch: b for b, ch in _bytes_to_unicode().items()}
        return lambda token: bytes(table[ch] for ch in token if ch in table)
    if "WordPiece" in kinds:
        return lambda token: (token[2:] if token.startswith("##") else " " + token).encode("utf-8")

    def metaspace(token):
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])  # a byte-fallback token
        return token.replace("\u2581", " ").encode("utf-8")
    return metaspace


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


# What tokenizer training sees of any one document and any one word. BPE training slows roughly
# quadratically with the length of a word (a 200k-character word took 17 s, a 5 MB one over ten
# minutes); no useful token is that long, so for training only, longer runs of non-space (minified
# JSON, base64, URLs) are cut into pieces and longer runs of whitespace are shortened.
TRAIN_MAX_WORD = 100
TRAIN_MAX_DOC = 200_000
_LONG_RUN = re.compile(r"\S{%d,}|\s{%d,}" % (TRAIN_MAX_WORD + 1, TRAIN_MAX_WORD + 1))


def _bound_run(match) -> str:
    run = match.group(0)
    if run[0].isspace():  # nothing can separate whitespace from whitespace: keep its start only
        return run[:TRAIN_MAX_WORD]
    return " ".join(run[i:i + TRAIN_MAX_WORD] for i in range(0, len(run), TRAIN_MAX_WORD))


def training_texts(files, read: ReadSettings, counts: dict):
    """The corpus as tokenizer training reads it: records the processor would reject skipped (and
    counted by reason), each document cut to TRAIN_MAX_DOC characters, runs over TRAIN_MAX_WORD bounded.
    With read.prefix_field, each document is its prompt then its text, as the processor stores it."""
    from tqdm import tqdm
    with tqdm(unit=" docs", desc="tokenizer: reading", file=sys.stderr, mininterval=1.0) as bar:
        for path in expand_inputs(files):
            for text, reason, _, _ in iter_records(path, 0, read):
                counts["read"] += 1
                if text is None:
                    counts["rejected"][reason] = counts["rejected"].get(reason, 0) + 1
                    continue
                if len(text) > TRAIN_MAX_DOC:
                    counts["documents_cut"] += 1
                    text = text[:TRAIN_MAX_DOC]
                text, n = _LONG_RUN.subn(_bound_run, text)
                counts["words_cut"] += n
                counts["documents"] += 1
                counts["characters"] += len(text)
                bar.update(1)
                yield text
    # Reading is done; the merges are computed next, without output of their own when not on a terminal.
    print(f"tokenizer: read {counts['documents']:,} documents ({counts['characters']:,} characters); "
          "training BPE merges...", file=sys.stderr, flush=True)


def train_tokenizer(files, out_path: str, vocab_size: int = 4096, read: ReadSettings = DEFAULT_READ,
                    say=print) -> Tokenizer:
    if not MIN_VOCAB <= vocab_size <= 2**32 - 1:
        raise DataError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special "
                        f"tokens), got {vocab_size}")
    backend = BackendTokenizer(models.BPE(unk_token=None, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True,
                                  min_frequency=2)
    counts = {"read": 0, "rejected": {}, "documents": 0, "characters": 0, "documents_cut": 0, "words_cut": 0}
    texts = training_texts(files, read, counts)
    backend.train_from_iterator(texts, trainer=trainer)
    if not counts["documents"]:  # a tokenizer of bytes alone would be of no use: say why instead
        raise nothing_usable(expand_inputs(files), counts["read"], counts["rejected"], read.text_field)
    if counts["documents_cut"] or counts["words_cut"]:
        say(f"tokenizer: for training only, cut {counts['documents_cut']} document(s) to {TRAIN_MAX_DOC:,} characters "
            f"and split or shortened {counts['words_cut']} run(s) of over {TRAIN_MAX_WORD} characters of non-space "
            "or of whitespace")
    tok = Tokenizer(backend)
    tok.save(out_path)
    return tok


def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer.json file or a directory holding one (or a WordPiece vocab.txt); roles come from
    special_tokens_map.json / tokenizer_config.json beside it when present."""
    backend, roles, framing = read_tokenizer_files(path)
    return Tokenizer(backend, roles, framing)
