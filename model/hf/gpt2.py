"""GPT-2 (GPT2LMHeadModel): pre-norm LayerNorm blocks with biases, learned positions, a tanh-GELU
MLP and a final LayerNorm, lm_head tied to the token embedding. transformers stores GPT-2's
projections as Conv1D ([in, out], the transpose of a Linear's weight), so every matrix is
transposed on the way in and out; the fused q|k|v (c_attn) is already our wqkv layout."""
from model.config import LMConfig
from model.hf.base import Family, Weights, common_kwargs, flag, need, number, positive, put

# Ours -> theirs, inside block i; (name, transposed).
_BLOCK = {
    "attention_norm": ("ln_1", False),
    "attention.wqkv": ("attn.c_attn", True),
    "attention.wo": ("attn.c_proj", True),
    "ffn_norm": ("ln_2", False),
    "feed_forward.w_up": ("mlp.c_fc", True),
    "feed_forward.w_down": ("mlp.c_proj", True),
}
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


class GPT2Family(Family):
    model_type, title, hf_class = "gpt2", "GPT-2", "GPT2LMHeadModel"
    # Causal-mask buffers older checkpoints saved with the weights.
    ignored = (r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias")
    PIECES = dict(norm="layernorm", positions="learned", feed_forward="gelu_tanh", bias=True, qkv_bias=True,
                  residual="pre", token_types=0, embedding_norm=False)

    def pieces(self, cfg: LMConfig) -> dict:
        # activation_function "gelu" (exact) is a GPT-2 too; n_kv_heads: GPT-2 has no grouped heads.
        ff = cfg.feed_forward if cfg.feed_forward in ("gelu", "gelu_tanh") else "gelu_tanh"
        return {**self.PIECES, "feed_forward": ff, "n_kv_heads": cfg.n_heads}

    def config_from_hf(self, hf: dict) -> dict:
        act = need(hf, "activation_function", tuple(_ACTIVATIONS), "gelu_new", self.title)
        need(hf, "scale_attn_weights", (True,), True, self.title)
        need(hf, "scale_attn_by_inverse_layer_idx", (False,), False, self.title)
        need(hf, "add_cross_attention", (False,), False, self.title)
        dim, vocab = positive(hf, "n_embd", 768), positive(hf, "vocab_size", 50257)
        return dict(arch="gpt2", objective="clm", vocab_size=vocab, dim=dim, n_layers=positive(hf, "n_layer", 12),
                    n_heads=positive(hf, "n_head", 12), hidden_dim=hf.get("n_inner") or 4 * dim,
                    max_seq_len=positive(hf, "n_positions", 1024), norm_eps=number(hf, "layer_norm_epsilon", 1e-5),
                    tie_embeddings=flag(hf, "tie_word_embeddings", True),
                    dropout=number(hf, "resid_pdrop", 0.1),
                    **{**self.PIECES, "feed_forward": _ACTIVATIONS[act]}, **common_kwargs(hf, vocab))

    def config_to_hf(self, cfg: LMConfig) -> dict:
        self.check(cfg)
        return dict(architectures=[self.hf_class], model_type="gpt2", vocab_size=cfg.vocab_size, n_embd=cfg.dim,
                    n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.ffn_dim, n_positions=cfg.max_seq_len,
                    layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                    activation_function="gelu_new" if cfg.feed_forward == "gelu_tanh" else "gelu",
                    resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                    scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)

    def tied_names(self, cfg: LMConfig) -> tuple:
        return ("lm_head.weight",) if cfg.tie_embeddings else ()

    def state_from_hf(self, hf_state: dict, cfg: LMConfig) -> dict:
        self.check(cfg)
        w = Weights(hf_state, self, prefixes=("transformer.",))
        out = {}
        put(out, "tok_embeddings.weight", w.get("wte.weight"))
        put(out, "positions.weight", w.get("wpe.weight"))
        for suffix in ("weight", "bias"):
            put(out, f"norm.{suffix}", w.get(f"ln_f.{suffix}"))
        lm_head = w.get("lm_head.weight")
        if not cfg.tie_embeddings:
            put(out, "output.weight", lm_head)
        for i in range(cfg.n_layers):
            for ours, (theirs, transposed) in _BLOCK.items():
                weight = w.get(f"h.{i}.{theirs}.weight")
                put(out, f"layers.{i}.{ours}.weight", weight.t().contiguous() if transposed and weight is not None
                    else weight)
                put(out, f"layers.{i}.{ours}.bias", w.get(f"h.{i}.{theirs}.bias"))
        w.finish()
        return out

    def state_to_hf(self, state: dict, cfg: LMConfig) -> dict:
        self.check(cfg)
        out = {"transformer.wte.weight": state["tok_embeddings.weight"],
               "transformer.wpe.weight": state["positions.weight"],
               "transformer.ln_f.weight": state["norm.weight"], "transformer.ln_f.bias": state["norm.bias"],
               "lm_head.weight": state["tok_embeddings.weight" if cfg.tie_embeddings else "output.weight"]}
        for i in range(cfg.n_layers):
            for ours, (theirs, transposed) in _BLOCK.items():
                weight = state[f"layers.{i}.{ours}.weight"]
                out[f"transformer.h.{i}.{theirs}.weight"] = weight.t().contiguous() if transposed else weight
                out[f"transformer.h.{i}.{theirs}.bias"] = state[f"layers.{i}.{ours}.bias"]
        return out


GPT2 = GPT2Family()
