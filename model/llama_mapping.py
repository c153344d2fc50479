"""The Llama weight mapping's former home, kept importable: the mapping now lives in
model/hf/llama.py with the other families (model/hf/)."""
from model.config import LMConfig
from model.hf.llama import LLAMA


def to_llama_state_dict(state: dict, cfg: LMConfig) -> dict:
    return LLAMA.state_to_hf(state, cfg)


def from_llama_state_dict(state: dict, cfg: LMConfig) -> dict:
    return LLAMA.state_from_hf(state, cfg)


def llama_config_kwargs(cfg: LMConfig) -> dict:
    """Keyword arguments for transformers.LlamaConfig describing the same network."""
    return {k: v for k, v in LLAMA.config_to_hf(cfg).items() if k not in ("architectures", "model_type")}
