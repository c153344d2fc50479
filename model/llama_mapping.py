"""Weight-name mapping between this Transformer (causal) and the Llama layout used by
transformers' LlamaForCausalLM. Both use split-halves rotary embeddings, so tensors copy as they are."""
from model.config import LMConfig

_BLOCK = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w_gate.weight": "mlp.gate_proj.weight",
    "feed_forward.w_up.weight": "mlp.up_proj.weight",
    "feed_forward.w_down.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def name_map(cfg: LMConfig) -> dict:
    """ours -> Llama names."""
    names = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["output.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        for ours, theirs in _BLOCK.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


def to_llama_state_dict(state: dict, cfg: LMConfig) -> dict:
    if not cfg.causal:
        raise ValueError("only causal models map to the Llama layout")
    out = {theirs: state[ours] for ours, theirs in name_map(cfg).items()}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = state["tok_embeddings.weight"]
    return out


def from_llama_state_dict(state: dict, cfg: LMConfig) -> dict:
    return {ours: state[theirs] for ours, theirs in name_map(cfg).items()}


def llama_config_kwargs(cfg: LMConfig) -> dict:
    """Keyword arguments for transformers.LlamaConfig describing the same network."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False)
