"""The residual order of a block, one more piece chosen by name (model.residual): a block class per
order in RESIDUALS, each built from the config's norm, attention and feed-forward pieces.

pre  (Llama, GPT-2): x + attention(norm(x)), then x + feed_forward(norm(x)); the model ends with
     a final norm.
post (BERT): norm(x + attention(x)), then norm(x + feed_forward(x)); the stream leaving the last
     block is already normalised, so the model has no final norm."""
from torch import nn

from model.attention import Attention
from model.layers import FEED_FORWARDS, NORMS, POSITIONS


class Block(nn.Module):
    """Pre-norm block. The norm and feed-forward come from their registries by the config's names;
    so does the positions piece, whose `rotary` tells attention whether to rotate q and k."""

    final_norm = True  # the model normalises the last block's output

    def __init__(self, cfg):
        super().__init__()
        norm = NORMS[cfg.norm]
        self.attention_norm = norm.from_config(cfg)
        self.attention = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.dropout, bias=cfg.bias,
                                   rotary=POSITIONS[cfg.positions].rotary, qkv_bias=cfg.qkv_bias,
                                   qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps)
        self.ffn_norm = norm.from_config(cfg)
        self.feed_forward = FEED_FORWARDS[cfg.feed_forward].from_config(cfg)

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None, layer=0):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, is_causal, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


class PostNormBlock(Block):
    """Post-norm block (BERT): the same pieces and state-dict keys, the norms after each residual
    sum. attention_norm follows attention, ffn_norm follows the feed-forward."""

    final_norm = False

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None, layer=0):
        x = self.attention_norm(x + self.attention(x, cos, sin, mask, is_causal, cache, layer))
        return self.ffn_norm(x + self.feed_forward(x))


RESIDUALS = {"pre": Block, "post": PostNormBlock}
