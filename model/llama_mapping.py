"""Weight mapping between this Transformer (causal) and the Llama layout used by transformers'
LlamaForCausalLM. Both use split-halves rotary embeddings, so tensors copy as they are; our fused
projections (wqkv, w_gate_up) are split into, or joined from, Llama's separate ones."""
import torch

from model.config import LMConfig

_BLOCK = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w_down.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
# The block pieces the Llama layout has; another family's pieces would map to wrong weights.
LLAMA_PIECES = {"norm": "rmsnorm", "positions": "rope", "feed_forward": "swiglu", "bias": False}


def _check(cfg: LMConfig) -> None:
    if not cfg.causal:
        raise ValueError("only causal models map to the Llama layout")
    other = {key: getattr(cfg, key) for key, value in LLAMA_PIECES.items() if getattr(cfg, key) != value}
    if other:
        raise ValueError("only the Llama block maps to the Llama layout ("
                         + ", ".join(f"model.{k}={v!r}" for k, v in LLAMA_PIECES.items()) + "); this model has "
                         + ", ".join(f"model.{k}={v!r}" for k, v in other.items()))


def to_llama_state_dict(state: dict, cfg: LMConfig) -> dict:
    _check(cfg)
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"],
           "lm_head.weight": state["tok_embeddings.weight" if cfg.tie_embeddings else "output.weight"]}
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in _BLOCK.items():
            out[theirs + b] = state[ours + a]
        for name, part in zip(_QKV, state[ours + "attention.wqkv.weight"].split((q, kv, kv))):
            out[theirs + name] = part
        for name, part in zip(_GATE_UP, state[ours + "feed_forward.w_gate_up.weight"].chunk(2)):
            out[theirs + name] = part
    return out


def from_llama_state_dict(state: dict, cfg: LMConfig) -> dict:
    _check(cfg)
    out = {"tok_embeddings.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in _BLOCK.items():
            out[ours + a] = state[theirs + b]
        out[ours + "attention.wqkv.weight"] = torch.cat([state[theirs + n] for n in _QKV])
        out[ours + "feed_forward.w_gate_up.weight"] = torch.cat([state[theirs + n] for n in _GATE_UP])
    return out


def llama_config_kwargs(cfg: LMConfig) -> dict:
    """Keyword arguments for transformers.LlamaConfig describing the same network."""
    _check(cfg)
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False)
