"""Hugging Face model families in and out: one small file per family maps its config.json and
weight names to and from ours.

    FAMILIES                       transformers model_type -> family
    family_for_hf_config(config)   the family of a config.json (ValueError, one line, when unsupported)
    family_for_config(cfg)         the family of one of our models, by cfg.arch

Each family has config_from_hf(hf_config) -> LMConfig kwargs, config_to_hf(cfg) -> config.json,
state_from_hf(hf_state, cfg) -> our state dict (weights the HF state lacks stay absent),
state_to_hf(state, cfg) -> the layout its transformers class loads, and hf_class_name(cfg).
Going out, a model that is not exactly the family's (another piece, another objective) is a
ValueError naming the difference rather than a directory transformers would load wrongly."""
from model.hf.base import Family
from model.hf.bert import BERT
from model.hf.gpt2 import GPT2
from model.hf.llama import LLAMA, QWEN2
from model.hf.qwen3 import QWEN3

FAMILIES = {f.model_type: f for f in (LLAMA, QWEN2, QWEN3, GPT2, BERT)}

# Classes whose weights a family reads, for a config.json without model_type.
_ARCHITECTURES = {"LlamaForCausalLM": "llama", "LlamaModel": "llama", "Qwen2ForCausalLM": "qwen2",
                  "Qwen2Model": "qwen2", "GPT2LMHeadModel": "gpt2", "GPT2Model": "gpt2", "BertForMaskedLM": "bert",
                  "BertModel": "bert", "BertForPreTraining": "bert", "Qwen3ForCausalLM": "qwen3", "Qwen3Model": "qwen3"}


def family_for_hf_config(hf_config: dict) -> Family:
    model_type = hf_config.get("model_type")
    architectures = hf_config.get("architectures") or []
    if not isinstance(model_type, (str, type(None))):
        raise ValueError(f"config.json: model_type must be a string, got {model_type!r:.60}")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ValueError(f"config.json: architectures must be a list of class names, got {architectures!r:.60}")
    if model_type is None:
        model_type = next((_ARCHITECTURES[a] for a in architectures if a in _ARCHITECTURES), None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise ValueError(f"unsupported model_type {model_type!r} (architectures: {', '.join(architectures) or 'none'}); "
                     f"supported: {', '.join(FAMILIES)}")


def family_for_config(cfg) -> Family:
    return FAMILIES[cfg.arch]


__all__ = ["FAMILIES", "Family", "family_for_config", "family_for_hf_config"]
