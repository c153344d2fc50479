"""Qwen3 (Qwen3ForCausalLM): the Llama block with QK-norm (an RMS norm with a learnable
[head_dim] weight over each head's q and k, after the projection and before rotary), no q/k/v
biases, rope_theta 1e6 and rms_norm_eps 1e-6 by default. Weights map as Llama's plus the two
per-layer norms (self_attn.q_norm / k_norm <-> attention.q_norm / k_norm).

Qwen3 configs whose head_dim x num_attention_heads differs from hidden_size (Qwen3-0.6B, -4B) are
refused in one line: our attention projects to dim / n_heads channels per head."""
from model.config import LMConfig
from model.hf.llama import LlamaFamily

_QK_NORMS = {"attention.q_norm.weight": "self_attn.q_norm.weight", "attention.k_norm.weight": "self_attn.k_norm.weight"}


class Qwen3Family(LlamaFamily):
    model_type, title, hf_class = "qwen3", "Qwen3", "Qwen3ForCausalLM"
    PIECES = {**LlamaFamily.PIECES, "qk_norm": True}
    qkv_bias = False

    def _check_hf(self, hf: dict) -> None:
        super()._check_hf(hf)  # silu, no attention_bias
        if hf.get("use_sliding_window", False):
            raise ValueError("config.json: Qwen3 with use_sliding_window true is not supported (full attention only)")

    def _extra_hf(self) -> dict:
        return dict(attention_bias=False, use_sliding_window=False)

    def state_from_hf(self, hf_state: dict, cfg: LMConfig) -> dict:
        rest, norms = dict(hf_state), {}
        for i in range(cfg.n_layers):
            for ours, theirs in _QK_NORMS.items():
                for prefix in ("model.", ""):
                    key = f"{prefix}layers.{i}.{theirs}"
                    if key in rest:
                        norms[f"layers.{i}.{ours}"] = rest.pop(key)
                        break
        out = super().state_from_hf(rest, cfg)  # checks the pieces; leftovers (more layers' norms) refused
        out.update(norms)
        return out

    def state_to_hf(self, state: dict, cfg: LMConfig) -> dict:
        out = super().state_to_hf(state, cfg)
        for i in range(cfg.n_layers):
            for ours, theirs in _QK_NORMS.items():
                out[f"model.layers.{i}.{theirs}"] = state[f"layers.{i}.{ours}"]
        return out


QWEN3 = Qwen3Family()
