"""One hand-written Transformer for every objective.

clm: causal attention, next-token head, KV cache for generation.
plm: clm's model; forward's in_prefix makes the prefix (the prompt) attend both ways.
mlm: bidirectional attention, masked-LM head (transform, GELU, norm, tied decoder with bias) whose
vocabulary logits are computed only where a label exists.

Every piece (norm, positions, feed-forward, attention biases, residual order, input embeddings) is
chosen by the config when the model is built; forward runs the pieces it was built with."""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import KVCache
from model.blocks import RESIDUALS
from model.config import LMConfig
from model.layers import NORMS, POSITIONS
from model.losses import IGNORE_INDEX, chunked_cross_entropy_sum
from model.next_sentence import NextSentenceHead


@dataclass
class ModelOutput:
    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None       # mean over labelled positions
    loss_sum: Optional[torch.Tensor] = None   # sum over labelled positions
    n_targets: Optional[torch.Tensor] = None  # how many positions carried a label
    nsp_logits: Optional[torch.Tensor] = None    # [B, 2] with a next-sentence head
    nsp_loss_sum: Optional[torch.Tensor] = None  # sum over the batch, when next_sentence_label was given


class MLMHead(nn.Module):
    """Transform -> GELU -> norm, then the decoder (the embedding matrix) plus a bias."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.norm = NORMS[cfg.norm].from_config(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, decoder_weight):
        return F.linear(self.norm(F.gelu(self.dense(h))), decoder_weight, self.bias)


class Transformer(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        # Input pieces beside the token embedding (BERT, GPT-2); absent from the default model.
        self.token_type_embeddings = nn.Embedding(config.token_types, config.dim) if config.token_types else None
        self.embedding_norm = NORMS[config.norm].from_config(config) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        block = RESIDUALS[config.residual]
        self.layers = nn.ModuleList(block(config) for _ in range(config.n_layers))
        self.norm = NORMS[config.norm].from_config(config) if block.final_norm else nn.Identity()
        # rope / none: no parameters, no state-dict keys; learned: positions.weight, added at the input.
        self.positions = POSITIONS[config.positions].from_config(config)
        self._input_pieces = bool(self.positions.additive or config.token_types or config.embedding_norm)
        if config.causal:
            self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
            self.mlm_head = None
        else:
            self.output = None
            self.mlm_head = MLMHead(config)
        self.next_sentence = NextSentenceHead(config) if config.next_sentence else None
        self.apply(self._init_weights)
        # Residual projections scaled by depth, so the residual stream's variance stays bounded.
        # model.zero_init: they start at 0 instead, so each block starts as the identity.
        for name, p in self.named_parameters():
            if name.endswith("attention.wo.weight") or name.endswith("feed_forward.w_down.weight"):
                if config.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))
        if self.output is not None and config.head_init_std is not None:  # an untied head's own init
            nn.init.normal_(self.output.weight, mean=0.0, std=config.head_init_std)

    @classmethod
    def from_checkpoint(cls, path: str, ema=None, device="cpu") -> "Transformer":
        """The model of a checkpoint file, in eval mode: its config and weights in one call (a
        checkpoint is a dict of parts and metadata, not a bare state dict, and is read with
        weights_only=True). ema: None = the weights the run evaluated, True = EMA, False = raw.
        The tokenizer comes with checkpoint.load_for_inference, or from an export directory."""
        from checkpoint import load_for_inference
        return load_for_inference(path, ema=ema, device=device)[0]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        """model.logit_softcap: cap * tanh(logits / cap), every place logits are produced."""
        cap = self.config.logit_softcap
        return logits if not cap else cap * torch.tanh(logits / cap)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    # ---- forward -----------------------------------------------------------------------------
    def _positions_and_mask(self, input_ids, attention_mask, cache, document_ids=None, in_prefix=None):
        """Positions [B, T] (or [T]) and a bool attention mask [B, 1, T, S] (None: plain)."""
        if document_ids is not None or in_prefix is not None:
            return self._segment_positions_and_mask(input_ids, attention_mask, cache, document_ids, in_prefix)
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            positions = torch.arange(past, past + t, device=input_ids.device)
            if cache is None or t == 1 or not self.config.causal:
                return positions, None  # SDPA's own causal flag (or none) covers it
            keys = torch.arange(past + t, device=input_ids.device)
            mask = keys[None, :] <= positions[:, None]
            return positions, mask[None, None]
        am = attention_mask.to(torch.bool)
        if am.shape != (b, past + t):
            raise ValueError(f"attention_mask must have shape {(b, past + t)} (cached + new tokens), got {tuple(am.shape)}")
        # Left padding: a token's position counts only the real tokens before it.
        positions = (am.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        mask = am[:, None, None, :].expand(b, 1, t, past + t)
        query_index = torch.arange(past, past + t, device=input_ids.device)
        key_index = torch.arange(past + t, device=input_ids.device)
        if self.config.causal:
            mask = mask & (key_index[None, :] <= query_index[:, None])[None, None]
        # Every query may see itself, so rows of padding never become all -inf (NaN).
        mask = mask | (key_index[None, :] == query_index[:, None])[None, None]
        return positions, mask

    def _segment_positions_and_mask(self, input_ids, attention_mask, cache, document_ids, in_prefix):
        """Packed documents and prefix-LM prefixes, as one boolean mask for SDPA (no loop per document).

        document_ids [B, T]: a token attends only to tokens of its own document, and positions restart
        at 0 where a document starts. in_prefix [B, T] bool (a causal model's prompt or prefix): prefix
        tokens attend to each other both ways; every other token stays causal. Prefix tokens must
        precede the rest of their document, so no token ever sees a later token outside the prefix."""
        b, t = input_ids.shape
        device = input_ids.device
        if cache is not None and cache.length:
            raise ValueError("document_ids and in_prefix describe a whole sequence: give them with the prompt "
                             "(an empty cache), not with a decoding step")
        if in_prefix is not None and not self.config.causal:
            raise ValueError("in_prefix marks the bidirectional prefix of a causal or prefix LM; a masked LM "
                             "attends both ways everywhere")
        index = torch.arange(t, device=device)
        same = torch.ones(b, t, t, dtype=torch.bool, device=device)
        if self.config.causal:
            same = same & (index[None, :] <= index[:, None])
            if in_prefix is not None:
                if in_prefix.shape != (b, t):
                    raise ValueError(f"in_prefix must have shape {(b, t)}, got {tuple(in_prefix.shape)}")
                prefix = in_prefix.to(torch.bool)
                same = same | (prefix[:, :, None] & prefix[:, None, :])
        if document_ids is not None:
            if document_ids.shape != (b, t):
                raise ValueError(f"document_ids must have shape {(b, t)}, got {tuple(document_ids.shape)}")
            if attention_mask is not None:
                raise ValueError("document_ids and attention_mask together are not supported: pack documents "
                                 "without padding, or pad single documents without document_ids")
            same = same & (document_ids[:, :, None] == document_ids[:, None, :])
            # Where each document starts within the window: its tokens count from there.
            starts = torch.ones(b, t, dtype=torch.bool, device=device)
            starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
            first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
            positions = index - first
        elif attention_mask is not None:
            am = attention_mask.to(torch.bool)
            if am.shape != (b, t):
                raise ValueError(f"attention_mask must have shape {(b, t)}, got {tuple(am.shape)}")
            positions = (am.long().cumsum(-1) - 1).clamp(min=0)
            same = same & am[:, None, :]
        else:
            positions = index
        same = same | torch.eye(t, dtype=torch.bool, device=device)  # padding rows never all -inf
        return positions, same[:, None]

    def _add_input_pieces(self, x, positions, token_type_ids):
        """Token embeddings plus token types (type 0 where none are given) plus learned positions,
        then the embedding norm: BERT's and GPT-2's input."""
        if self.token_type_embeddings is not None:
            x = x + (self.token_type_embeddings.weight[0] if token_type_ids is None
                     else self.token_type_embeddings(token_type_ids))
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this model has no token-type embedding (model.token_types 0)")
        if self.positions.additive:
            x = x + self.positions(positions)
        return x if self.embedding_norm is None else self.embedding_norm(x)

    def hidden_states(self, input_ids, attention_mask=None, cache=None, token_type_ids=None, document_ids=None,
                      in_prefix=None):
        """The last block's output, after the final norm (pre-norm) or as is (post-norm): BERT's
        last_hidden_state. token_type_ids: [B, T] segment ids for a model with token types.
        document_ids [B, T]: packed documents that never attend to each other, positions restarting
        at each; in_prefix [B, T] bool: a causal model's bidirectional prefix (prefix LM)."""
        if cache is not None:
            if not self.config.causal:
                raise ValueError("a KV cache is for causal generation; this model is a masked LM")
            cache.check_room(input_ids.shape[1])
        positions, mask = self._positions_and_mask(input_ids, attention_mask, cache, document_ids, in_prefix)
        # With a cache, check_room already bounded every position by max_seq_len.
        cos, sin = self.positions.tables(positions, dtype=self.tok_embeddings.weight.dtype, checked=cache is not None)
        is_causal = self.config.causal and mask is None and (cache is None or cache.length == 0)
        x = self.tok_embeddings(input_ids)
        if self._input_pieces:
            x = self._add_input_pieces(x, positions, token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this model has no token-type embedding (model.token_types 0)")
        x = self.dropout(x)
        for i, layer in enumerate(self.layers):
            if self.config.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, mask, is_causal, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, is_causal, cache, i)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.norm(x)

    def forward(self, input_ids, labels=None, attention_mask=None, cache=None, return_logits=True,
                token_type_ids=None, document_ids=None, in_prefix=None, next_sentence_label=None) -> ModelOutput:
        """next_sentence_label [B] (0: the second segment follows the first, 1: it is random) adds the
        next-sentence loss sum to the output of a model with that head (model.next_sentence)."""
        h = self.hidden_states(input_ids, attention_mask, cache, token_type_ids, document_ids, in_prefix)
        if not self.config.causal:
            out = self._mlm_output(h, labels, return_logits)
            if self.next_sentence is not None:
                out.nsp_logits = self.next_sentence(h)
                if next_sentence_label is not None:
                    out.nsp_loss_sum = F.cross_entropy(out.nsp_logits.float(), next_sentence_label, reduction="sum")
            elif next_sentence_label is not None:
                raise ValueError("next_sentence_label given, but this model has no next-sentence head "
                                 "(model.next_sentence false)")
            return out
        if labels is None:
            return ModelOutput(logits=self._capped(F.linear(h, self.output_weight)))
        flat_h, flat_y = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
        n_targets = (flat_y != IGNORE_INDEX).sum()
        if return_logits:
            logits = self._capped(F.linear(h, self.output_weight))
            loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_y,
                                       ignore_index=IGNORE_INDEX, reduction="sum")
        else:
            logits, loss_sum = None, chunked_cross_entropy_sum(flat_h, self.output_weight, flat_y,
                                                               softcap=self.config.logit_softcap)
        return ModelOutput(logits, loss_sum / n_targets.clamp(min=1), loss_sum, n_targets)

    def decode_step(self, tokens, cache: KVCache, slot, positions, key_mask):
        """Logits [B, V] for one new token per row: tokens [B], written to the cache at position
        slot ([1] long tensor); positions [B]: each token's position (real tokens before it);
        key_mask [B, S] bool: which of the first S cached positions it may attend to, its own slot
        included (S: the positions written so far, or up to cache.max_len). Nothing on the host moves
        (cache.length stays as the prefill left it) and only S changes between steps, so one
        torch.compile trace with S marked dynamic serves every step."""
        x = self.tok_embeddings(tokens[:, None])
        positions = positions[:, None]
        cos, sin = self.positions.tables(positions, dtype=x.dtype, checked=True)
        if self._input_pieces:
            x = self._add_input_pieces(x, positions, None)
        mask, step = key_mask[:, None, None, :], cache.at(slot, key_mask.shape[1])
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, False, step, i)
        return self._capped(F.linear(self.norm(x[:, 0]), self.output_weight))

    def _mlm_output(self, h, labels, return_logits):
        if labels is None:
            return ModelOutput(logits=self._capped(self.mlm_head(h, self.tok_embeddings.weight)))
        selected = labels != IGNORE_INDEX
        # Only masked positions need vocabulary logits: the rest of the projection is wasted work.
        logits = self._capped(self.mlm_head(h[selected], self.tok_embeddings.weight))
        targets = labels[selected]
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        n_targets = selected.sum()
        return ModelOutput(logits if return_logits else None, loss_sum / n_targets.clamp(min=1), loss_sum, n_targets)

    # ---- utilities ---------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: Optional[int] = None, device=None, dtype=None) -> KVCache:
        max_len = max_len or self.config.max_seq_len
        if max_len > self.config.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len {self.config.max_seq_len}")
        ref = self.tok_embeddings.weight
        return KVCache(self.config.n_layers, batch_size, self.config.n_kv_heads, max_len, self.config.head_dim,
                       device=device or ref.device, dtype=dtype or ref.dtype)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters; exclude_embeddings leaves out the lookup tables (token, learned position and
        token-type embeddings), which cost no matmul FLOPs."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields tied weights once
        if not exclude_embeddings:
            return n
        tables = {id(m.weight): m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding)}
        return n - sum(tables.values())

    def flops_per_token(self, head_fraction: float = 1.0) -> float:
        """Training FLOPs per token: 6 x (matmul weights, output projection included) plus the
        attention score/value products at full context (12 x layers x dim x seq).
        head_fraction: share of positions whose vocabulary logits are computed (an MLM trained
        with sparse logits at mask rate 0.15 computes them for 15% of positions)."""
        c = self.config
        body = self.num_params(exclude_embeddings=True)
        return 6 * (body + head_fraction * c.vocab_size * c.dim) + 12 * c.n_layers * c.dim * c.max_seq_len

    def compile_blocks(self) -> None:
        """torch.compile each block in place (state-dict keys unchanged)."""
        for layer in self.layers:
            layer.compile()
