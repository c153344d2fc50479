"""What every family mapping shares: the pieces check, reading weights by name with leftovers
reported, and reading rope settings from a config.json of either transformers generation."""
import abc
import re

import torch

from model.config import LMConfig


class Family(abc.ABC):
    """One Hugging Face model family. Subclasses set the names below and implement config_from_hf,
    config_to_hf, state_from_hf and state_to_hf (a family missing one cannot be instantiated)."""

    model_type = ""          # transformers' model_type, the key in model.hf.FAMILIES
    title = ""               # how messages name the family
    hf_class = ""            # the class its export loads as
    objective = "clm"        # the objective its transformers class computes
    ignored = ()             # regexes of weights the mapping leaves behind on purpose (buffers, unused heads)
    PIECES = {}              # the LMConfig piece values this family's layout requires

    def pieces(self, cfg: LMConfig) -> dict:
        """The LMConfig values the layout requires of this config (each compared with the config's)."""
        return self.PIECES

    def check(self, cfg: LMConfig) -> None:
        """ValueError, one line, when the config's model is not exactly this family's."""
        if cfg.objective != self.objective:
            raise ValueError(self.objective_message(cfg))
        # No family here has soft-capped logits, and only Qwen3 has QK-norm (its PIECES say so).
        need = {"qk_norm": False, "logit_softcap": 0.0, **self.pieces(cfg)}
        other = {k: getattr(cfg, k) for k, v in need.items() if getattr(cfg, k) != v}
        if other:
            raise ValueError(f"only the {self.title} block maps to the {self.title} layout ("
                             + ", ".join(f"model.{k}={v!r}" for k, v in need.items()) + "); this model has "
                             + ", ".join(f"model.{k}={v!r}" for k, v in other.items()))

    def objective_message(self, cfg: LMConfig) -> str:
        return (f"{self.hf_class} is a {'causal' if self.objective == 'clm' else 'masked'} LM and this model's "
                f"objective is {cfg.objective}: no {self.title} class computes it")

    def hf_class_name(self, cfg: LMConfig) -> str:
        return self.hf_class

    def tied_names(self, cfg: LMConfig) -> tuple:
        """Names in state_to_hf's output that the transformers class ties to another of its weights
        (its _tied_weights_keys): save_pretrained stores the tensor once, under the other name, and
        loading ties them again, so an export leaves these out of model.safetensors."""
        return ()

    # Subclasses -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def config_from_hf(self, hf_config: dict) -> dict:
        """LMConfig keyword arguments for a config.json of this family."""

    @abc.abstractmethod
    def config_to_hf(self, cfg: LMConfig) -> dict:
        """The config.json its transformers class loads for this model."""

    @abc.abstractmethod
    def state_from_hf(self, hf_state: dict, cfg: LMConfig) -> dict:
        """Our state dict from the family's weights (weights it lacks stay absent)."""

    @abc.abstractmethod
    def state_to_hf(self, our_state: dict, cfg: LMConfig) -> dict:
        """The family's state dict from ours."""


class Weights:
    """An HF state dict read by name: get() marks a weight used (None when absent), and
    finish() raises one line naming a weight nothing used, unless the family ignores it."""

    def __init__(self, state: dict, family: Family, prefixes=()):
        self.family = family
        self.state = {}
        for key, value in state.items():
            for prefix in prefixes:  # e.g. "bert.", "transformer.", "model.": the base model's names
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    break
            self.state[key] = value
        self.used = set()

    def get(self, key: str):
        if key in self.state:
            self.used.add(key)
            return self.state[key]
        return None

    def cat(self, keys):
        """The named weights joined along dim 0 (fused projections); None unless all are present."""
        parts = [self.get(k) for k in keys]
        return torch.cat(parts) if all(p is not None for p in parts) else None

    def finish(self) -> None:
        ignored = [re.compile(p) for p in self.family.ignored]
        left = [k for k in self.state if k not in self.used and not any(p.fullmatch(k) for p in ignored)]
        if left:
            raise ValueError(f"{len(left)} weight(s) have no place in this {self.family.title} model, "
                             f"e.g. {left[0]} (an architecture variant this mapping does not cover)")


def put(out: dict, key: str, value) -> None:
    """out[key] = value when the HF state had it; our keys it lacks stay absent (the caller
    initialises them fresh and says so)."""
    if value is not None:
        out[key] = value


def positive(hf_config: dict, key: str, default=None) -> int:
    value = hf_config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def number(hf_config: dict, key: str, default: float) -> float:
    """A float setting (an epsilon, a dropout rate); null, text or a list is one line."""
    value = hf_config.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value < 0:
        raise ValueError(f"config.json: {key} must be a non-negative number, got {value!r}")
    return float(value)


def flag(hf_config: dict, key: str, default: bool) -> bool:
    """A true/false setting: the text "false" would otherwise read as true."""
    value = hf_config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def _section(hf_config: dict, key: str) -> dict:
    value = hf_config.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"config.json: {key} must be an object or null, got {type(value).__name__} {value!r:.60}")
    return value


def rope_theta(hf_config: dict, default: float = 10000.0) -> float:
    """rope_theta from rope_parameters (transformers 5) or the older rope_theta / rope_scaling
    keys; scaled rope variants (linear, dynamic, yarn, llama3...) are refused in one line."""
    params, scaling = _section(hf_config, "rope_parameters"), _section(hf_config, "rope_scaling")
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind not in (None, "default"):
            raise ValueError(f"config.json: rope type {kind!r} is not supported (only plain rope)")
    return number(params if "rope_theta" in params else hf_config, "rope_theta", default)


def common_kwargs(hf_config: dict, vocab_size: int) -> dict:
    """pad_token_id when config.json names a usable one."""
    pad = hf_config.get("pad_token_id")
    return {"pad_token_id": pad} if isinstance(pad, int) and 0 <= pad < vocab_size else {}


def need(hf_config: dict, key: str, allowed, default, title: str):
    value = hf_config.get(key, default)
    if value not in allowed:
        raise ValueError(f"config.json: {title} with {key}={value!r} is not supported "
                         f"(supported: {', '.join(repr(a) for a in allowed)})")
    return value
