"""Llama (LlamaForCausalLM) and Qwen2 (Qwen2ForCausalLM): our default block. Both use split-halves
rotary embeddings, so tensors copy as they are; our fused projections (wqkv, w_gate_up) are split
into, or joined from, their separate q/k/v and gate/up ones. Qwen2 is Llama with biases on q, k
and v (none on the output projection or the MLP)."""
from model.config import LMConfig
from model.hf.base import Family, Weights, common_kwargs, flag, need, number, positive, put, rope_theta

_BLOCK = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w_down.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
_MASKED = ("no transformers class computes this masked LM exactly (rmsnorm, rope and swiglu blocks under a "
           "dense-GELU-norm MLM head with a tied decoder; EuroBERT and ModernBERT differ in the head and norms): "
           "train with `--model.arch bert` for a model that exports as a masked LM")


class LlamaFamily(Family):
    model_type, title, hf_class = "llama", "Llama", "LlamaForCausalLM"
    ignored = (r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"rotary_emb\.inv_freq")
    PIECES = dict(norm="rmsnorm", positions="rope", feed_forward="swiglu", bias=False, qkv_bias=False,
                  residual="pre", token_types=0, embedding_norm=False)
    qkv_bias = False

    def objective_message(self, cfg: LMConfig) -> str:
        return _MASKED if cfg.objective == "mlm" else super().objective_message(cfg)

    # ---- config -------------------------------------------------------------------------------
    def _check_hf(self, hf: dict) -> None:
        need(hf, "hidden_act", ("silu",), "silu", self.title)
        if hf.get("attention_bias", False) or hf.get("mlp_bias", False):
            raise ValueError(f"config.json: {self.title} with attention_bias or mlp_bias is not supported")

    def config_from_hf(self, hf: dict) -> dict:
        self._check_hf(hf)
        dim, heads = positive(hf, "hidden_size", 4096), positive(hf, "num_attention_heads", 32)
        head_dim = hf.get("head_dim")
        if head_dim is not None and head_dim * heads != dim:
            raise ValueError(f"config.json: head_dim {head_dim} x {heads} heads != hidden_size {dim} is not supported")
        vocab = positive(hf, "vocab_size", 32000)
        return dict(arch=self.model_type, objective="clm", vocab_size=vocab, dim=dim,
                    n_layers=positive(hf, "num_hidden_layers", 32), n_heads=heads,
                    n_kv_heads=hf.get("num_key_value_heads") or heads,
                    hidden_dim=positive(hf, "intermediate_size", 11008),
                    max_seq_len=positive(hf, "max_position_embeddings", 2048),
                    norm_eps=number(hf, "rms_norm_eps", 1e-6), rope_theta=rope_theta(hf),
                    tie_embeddings=flag(hf, "tie_word_embeddings", False),
                    dropout=number(hf, "attention_dropout", 0.0),
                    **self.PIECES, **common_kwargs(hf, vocab))

    def config_to_hf(self, cfg: LMConfig) -> dict:
        self.check(cfg)
        return dict(architectures=[self.hf_class], model_type=self.model_type, vocab_size=cfg.vocab_size,
                    hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers,
                    num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                    max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                    tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", **self._extra_hf())

    def _extra_hf(self) -> dict:
        return dict(attention_bias=False, mlp_bias=False)

    # ---- weights ------------------------------------------------------------------------------
    def tied_names(self, cfg: LMConfig) -> tuple:
        return ("lm_head.weight",) if cfg.tie_embeddings else ()

    def state_from_hf(self, hf_state: dict, cfg: LMConfig) -> dict:
        self.check(cfg)
        w = Weights(hf_state, self, prefixes=("model.",))
        out = {}
        put(out, "tok_embeddings.weight", w.get("embed_tokens.weight"))
        put(out, "norm.weight", w.get("norm.weight"))
        lm_head = w.get("lm_head.weight")  # a tied model may store it too: the same tensor
        if not cfg.tie_embeddings:
            put(out, "output.weight", lm_head)
        for i in range(cfg.n_layers):
            ours, theirs = f"layers.{i}.", f"layers.{i}."
            for a, b in _BLOCK.items():
                put(out, ours + a, w.get(theirs + b))
            put(out, ours + "attention.wqkv.weight", w.cat([f"{theirs}{n}.weight" for n in _QKV]))
            if self.qkv_bias:
                put(out, ours + "attention.wqkv.bias", w.cat([f"{theirs}{n}.bias" for n in _QKV]))
            put(out, ours + "feed_forward.w_gate_up.weight", w.cat([theirs + n for n in _GATE_UP]))
        w.finish()
        return out

    def state_to_hf(self, state: dict, cfg: LMConfig) -> dict:
        self.check(cfg)
        out = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"],
               "lm_head.weight": state["tok_embeddings.weight" if cfg.tie_embeddings else "output.weight"]}
        sizes = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim)
        for i in range(cfg.n_layers):
            ours, theirs = f"layers.{i}.", f"model.layers.{i}."
            for a, b in _BLOCK.items():
                out[theirs + b] = state[ours + a]
            for name, part in zip(_QKV, state[ours + "attention.wqkv.weight"].split(sizes)):
                out[f"{theirs}{name}.weight"] = part
            if self.qkv_bias:
                for name, part in zip(_QKV, state[ours + "attention.wqkv.bias"].split(sizes)):
                    out[f"{theirs}{name}.bias"] = part
            for name, part in zip(_GATE_UP, state[ours + "feed_forward.w_gate_up.weight"].chunk(2)):
                out[theirs + name] = part
        return out


class Qwen2Family(LlamaFamily):
    model_type, title, hf_class = "qwen2", "Qwen2", "Qwen2ForCausalLM"
    PIECES = {**LlamaFamily.PIECES, "qkv_bias": True}
    qkv_bias = True

    def _check_hf(self, hf: dict) -> None:
        need(hf, "hidden_act", ("silu",), "silu", self.title)
        if hf.get("use_sliding_window", False):
            raise ValueError("config.json: Qwen2 with use_sliding_window true is not supported (full attention only)")

    def _extra_hf(self) -> dict:
        return dict(use_sliding_window=False)


LLAMA, QWEN2 = LlamaFamily(), Qwen2Family()
