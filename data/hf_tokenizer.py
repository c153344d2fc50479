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
from utils import write_json_atomic

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


def save_roles(tokenizer, directory: str) -> None:
    """Write special_tokens_map.json and tokenizer_config.json for a tokenizer whose roles are not
    the default (also what AutoTokenizer reads to know pad, eos and mask)."""
    roles = {f"{keys[0]}": tokenizer.roles[role] for role, keys in ROLE_KEYS.items() if tokenizer.roles.get(role)}
    if tokenizer.framing == "cls_sep":
        roles["cls_token"], roles["sep_token"] = tokenizer.roles.get("bos"), tokenizer.roles.get("eos")
        roles.pop("bos_token", None), roles.pop("eos_token", None)
    write_json_atomic(os.path.join(directory, "special_tokens_map.json"), roles)
    write_json_atomic(os.path.join(directory, "tokenizer_config.json"),
                      {**roles, "tokenizer_class": "PreTrainedTokenizerFast", "document_framing": tokenizer.framing,
                       "model_max_length": 1_000_000_000})
