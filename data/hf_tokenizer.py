"""Tokenizers from Hugging Face directories, taken as they are: `tokenizer.json`, or `vocab.txt`
(WordPiece) alone, with the special tokens' roles read from `special_tokens_map.json` /
`tokenizer_config.json`. Nothing is downloaded; only local files are read.

The same two JSON files are written beside a tokenizer whose roles are not this project's own,
so a run directory's tokenizer.json reloads with its roles."""
import json
import os

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from data.errors import DataError
from utils import atomic_write, write_json_atomic

ROLE_KEYS = {"pad": ("pad_token",), "bos": ("bos_token", "cls_token"), "eos": ("eos_token", "sep_token"),
             "unk": ("unk_token",), "mask": ("mask_token",)}
SIDECARS = ("special_tokens_map.json", "tokenizer_config.json")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({type(e).__name__})")
    return data if isinstance(data, dict) else {}


def _token(value):
    """A special-token entry as written by transformers: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def read_roles(directory: str):
    """(roles, framing) from the directory's sidecar files, or None when it has neither."""
    found = [os.path.join(directory, n) for n in SIDECARS if os.path.isfile(os.path.join(directory, n))]
    if not found:
        return None
    merged = {}
    for path in reversed(found):  # special_tokens_map.json wins over tokenizer_config.json
        merged.update(_read_json(path))
    roles = {role: next((_token(merged.get(k)) for k in keys if _token(merged.get(k))), None)
             for role, keys in ROLE_KEYS.items()}
    framing = merged.get("document_framing")
    if framing is None:  # BERT-style: [CLS] ... [SEP] and no separate bos/eos
        framing = "cls_sep" if _token(merged.get("cls_token")) and not _token(merged.get("eos_token")) else "eos"
    return roles, framing


def _wordpiece(directory: str) -> BackendTokenizer:
    """A BERT WordPiece tokenizer from vocab.txt, configured as BertTokenizer is."""
    config = {}
    if os.path.isfile(os.path.join(directory, "tokenizer_config.json")):
        config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    path = os.path.join(directory, "vocab.txt")
    try:
        with open(path, encoding="utf-8") as f:
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}): a WordPiece vocabulary is one UTF-8 token a line")
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e})")
    unk = _token(config.get("unk_token")) or "[UNK]"
    backend = BackendTokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    lower = config.get("do_lower_case", True)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=config.get("strip_accents"), lowercase=lower)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    specials = [t for t in vocab if t.startswith("[") and t.endswith("]") and t[1:-1].isupper()]
    backend.add_special_tokens(specials)
    return backend


def read_tokenizer_files(path: str) -> tuple:
    """(backend, roles or None, framing) from a directory (tokenizer.json or vocab.txt) or a
    tokenizer.json file, the roles from the sidecar files beside it (None: there are none)."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if os.path.isfile(file):
        try:
            backend = BackendTokenizer.from_file(file)
        except Exception as e:
            raise DataError(f"{file} is not a tokenizers JSON file ({str(e).splitlines()[0][:100]})")
        # Saved pipelines may pad or cut every encoding (to 128 tokens, say): documents need neither.
        backend.no_padding()
        backend.no_truncation()
    elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "vocab.txt")):
        backend = _wordpiece(path)
    else:
        raise DataError(f"tokenizer not found: {file}" + (" (nor vocab.txt)" if os.path.isdir(path) else ""))
    found = read_roles(directory)
    if found is None or all(v is None for v in found[0].values()):
        return backend, None, "eos"
    return backend, found[0], found[1]


def _sidecar(roles: dict, framing: str) -> dict:
    """Roles as transformers names them: cls/sep for a cls_sep tokenizer, bos/eos otherwise."""
    named = {keys[0]: roles[role] for role, keys in ROLE_KEYS.items() if roles.get(role)}
    if framing == "cls_sep":
        named["cls_token"], named["sep_token"] = roles.get("bos"), roles.get("eos")
        named.pop("bos_token", None), named.pop("eos_token", None)
    return named


def _write_sidecars(directory: str, named: dict, framing: str, model_max_length: int) -> None:
    write_json_atomic(os.path.join(directory, "special_tokens_map.json"), named)
    write_json_atomic(os.path.join(directory, "tokenizer_config.json"),
                      {**named, "tokenizer_class": "PreTrainedTokenizerFast", "document_framing": framing,
                       "model_max_length": model_max_length})


def save_roles(tokenizer, directory: str) -> None:
    """Write special_tokens_map.json and tokenizer_config.json for a tokenizer whose roles are not
    the default (also what AutoTokenizer reads to know pad, eos and mask). A run directory's
    tokenizer is not tied to one model's context: its length is left unbounded."""
    _write_sidecars(directory, _sidecar(tokenizer.roles, tokenizer.framing), tokenizer.framing, 1_000_000_000)


def save_for_transformers(tokenizer, directory: str, model_max_length: int) -> None:
    """The tokenizer files of an export: tokenizer.json, the two sidecars, and vocab.txt for a
    WordPiece tokenizer (what BERT tools read). model_max_length is the model's context, so
    truncation=True cuts to what the model can read. bos is declared as the token documents
    followed in training (Tokenizer.start_id), which is what lm-eval and an empty prompt feed."""
    vocab = _vocab_txt(tokenizer)  # checked before anything is written
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    roles = {**tokenizer.roles, "bos": tokenizer.backend.id_to_token(tokenizer.start_id)}
    _write_sidecars(directory, _sidecar(roles, tokenizer.framing), tokenizer.framing, model_max_length)
    if vocab is not None:
        atomic_write(os.path.join(directory, "vocab.txt"), lambda f: f.write(vocab), binary=False)


def _vocab_txt(tokenizer):
    """A WordPiece tokenizer's vocab.txt text (every token, added ones included, one a line by
    id), or None for another kind of tokenizer."""
    if json.loads(tokenizer.backend.to_str())["model"].get("type") != "WordPiece":
        return None
    by_id = {i: t for t, i in tokenizer.backend.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))) or any("\n" in t or "\r" in t for t in by_id.values()):
        raise DataError("this WordPiece vocabulary has gaps in its ids or a token with a line break: "
                        "vocab.txt (one token per line, by id) cannot hold it")
    return "".join(by_id[i] + "\n" for i in range(len(by_id)))


def from_transformers(hf_tokenizer):
    """Our Tokenizer from a transformers one (AutoTokenizer.from_pretrained): the same `tokenizers`
    pipeline, so text encodes and decodes as it does there, with its special tokens by role. Like a
    tokenizer.json without sidecar files, one that names no special token has this project's."""
    from data.tokenizer import Tokenizer
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"{type(hf_tokenizer).__name__} has no `tokenizers` backend (a slow tokenizer); load it "
                        "with AutoTokenizer.from_pretrained(..., use_fast=True)")
    backend = BackendTokenizer.from_str(backend.to_str())  # a copy: padding or truncation set there stays there
    backend.no_padding()
    backend.no_truncation()
    named = {k: _token(v) for k, v in (getattr(hf_tokenizer, "special_tokens_map", None) or {}).items()}
    roles = {role: next((named[k] for k in keys if named.get(k)), None) for role, keys in ROLE_KEYS.items()}
    framing = (getattr(hf_tokenizer, "init_kwargs", None) or {}).get("document_framing")
    if framing is None:
        framing = "cls_sep" if named.get("cls_token") and not named.get("eos_token") else "eos"
    return Tokenizer(backend, roles if any(roles.values()) else None, framing)


def as_tokenizer(tokenizer):
    """A tokenizer as this project's code takes it: ours (or one shaped like it: eos_id, encode,
    decode, decode_bytes) as it is, a transformers tokenizer through from_transformers."""
    if hasattr(tokenizer, "eos_id"):
        return tokenizer
    if hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "special_tokens_map"):
        return from_transformers(tokenizer)
    raise TypeError(f"{type(tokenizer).__name__} is not a tokenizer: pass data.tokenizer.Tokenizer "
                    "(load_tokenizer) or a transformers tokenizer (AutoTokenizer.from_pretrained)")
