"""Reading a local Hugging Face model directory into our model: config.json through its family,
then model.safetensors (or pytorch_model.bin, read with weights_only=True; sharded files through
their index). Nothing is downloaded. convert.py from_hf and --init_from (training/init_from.py)
both come here; each passes the data package's tokenizer loader, which model/ does not import."""
import json
import os

import torch

from model.config import LMConfig
from model.hf import family_for_hf_config
from model.transformer import Transformer
from utils import UserError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HFDirectoryError(UserError):
    """A Hugging Face model directory that cannot be read into our model; one line."""


def read_json(path: str) -> dict:
    """A JSON object from a file; anything else (a list, a directory, bad bytes) is one line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise HFDirectoryError(f"{path} not found: a Hugging Face model directory holds config.json and its weights")
    except OSError as e:
        raise HFDirectoryError(f"{path} cannot be read ({e.strerror or e})")
    except ValueError as e:  # UnicodeDecodeError included
        raise HFDirectoryError(f"{path} is not valid JSON ({e})")
    if not isinstance(data, dict):
        raise HFDirectoryError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def _load_weight_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise HFDirectoryError(f"{path} not found (named by the weights index beside it)")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:  # cut short, or not a safetensors file at all
            raise HFDirectoryError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:150]})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that would have to run code, or a cut file
        raise HFDirectoryError(f"{path} cannot be read safely ({type(e).__name__}); a safetensors file is preferred")


def _index_shards(index_path: str) -> list:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(v, str) and v for v in weight_map.values()):
        raise HFDirectoryError(f"{index_path}: weight_map must be an object from weight names to shard file names")
    return sorted(set(weight_map.values()))


def read_hf_weights(directory: str) -> dict:
    """Every tensor of the model: one weight file, or the shards its index names."""
    for name in WEIGHT_FILES:
        index = os.path.join(directory, name + ".index.json")
        if os.path.isfile(index):
            state = {}
            for shard in _index_shards(index):
                state.update(_load_weight_file(os.path.join(directory, shard)))
            return state
        if os.path.isfile(os.path.join(directory, name)):
            return _load_weight_file(os.path.join(directory, name))
    raise HFDirectoryError(f"{directory} holds no {' or '.join(WEIGHT_FILES)} (nor a sharded index of them)")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0  # unknown: not checked


def check_model_fits(cfg: LMConfig, directory: str) -> None:
    """Refuse, before anything is allocated, a config.json whose model could not be held in this
    machine's memory (a vocab_size of 10**12, say). Counted on the meta device from one and two
    blocks, so a huge layer count costs nothing either."""
    def count(n_layers):
        with torch.device("meta"):
            model = Transformer(type(cfg)(**{**cfg.to_dict(), "n_layers": n_layers}))
        return sum(t.numel() for t in (*model.parameters(), *model.buffers()))

    one, two = count(1), count(2)
    total = one + (cfg.n_layers - 1) * (two - one)
    need, have = 4 * total, _physical_memory()
    if have and need > have:
        raise HFDirectoryError(f"{directory}: config.json describes a model of {total:,} parameters ({need / 2**30:,.1f} "
                               f"GiB in float32, vocab_size {cfg.vocab_size:,}, dim {cfg.dim:,}, {cfg.n_layers:,} "
                               f"layers), more than this machine's {have / 2**30:,.1f} GiB of memory")


def import_hf(directory: str, load_tokenizer, say=print) -> tuple:
    """(model, LMConfig, Tokenizer) from a local Hugging Face directory, weights copied exactly.
    load_tokenizer(directory): data/tokenizer.py's. Our parameters the directory lacks (an encoder
    saved without its MLM head) start fresh, said in one line; a weight that does not fit is an
    error naming it."""
    if not os.path.isdir(directory):
        raise HFDirectoryError(f"{directory} is not a directory (a Hugging Face model directory is expected)")
    hf_config = read_json(os.path.join(directory, "config.json"))
    try:
        family = family_for_hf_config(hf_config)
        cfg = LMConfig.from_dict(family.config_from_hf(hf_config))
    except ValueError as e:
        raise HFDirectoryError(f"{directory}: {e}")
    check_model_fits(cfg, directory)
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise HFDirectoryError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, the model only "
                               f"{cfg.vocab_size} embedding rows")
    if not cfg.causal and tokenizer.mask_id is None:
        raise HFDirectoryError(f"{directory}: a masked LM needs a mask token, and this tokenizer names none")
    torch.manual_seed(0)  # parameters the import lacks start the same way every time
    model = Transformer(cfg)
    try:
        ours = family.state_from_hf(read_hf_weights(directory), cfg)
        result = model.load_state_dict(ours, strict=False)
    except (KeyError, RuntimeError, ValueError) as e:
        raise HFDirectoryError(f"{directory}: a weight does not fit ({str(e).splitlines()[-1].strip()[:200]})")
    fresh = [k for k in result.missing_keys if not k.startswith(("mlm_head.", "output."))]
    if fresh or result.unexpected_keys:
        what = ", ".join([f"missing {k}" for k in fresh[:3]] + [f"unexpected {k}" for k in result.unexpected_keys[:3]])
        raise HFDirectoryError(f"{directory}: weights do not match the {cfg.arch} layout ({what})")
    if result.missing_keys:
        head = "MLM head" if not cfg.causal else "output layer"
        say(f"note: {directory} has no {head}; it starts freshly initialised ({len(result.missing_keys)} tensors)")
    return model.eval(), cfg, tokenizer
