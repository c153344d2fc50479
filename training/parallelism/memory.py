"""What one training step needs per rank, computed from the config alone ("will it fit?").

The model is built on the meta device (no memory), so parameter counts are exact for every family.
What the trainer keeps, in bytes per parameter: fp32 weights (autocast computes in bf16/fp16 from
them, so they are also the master copy), fp32 gradients, AdamW's two fp32 moments, an fp32 EMA copy
when --use_ema. DDP adds its gradient buckets (another fp32 copy of the gradients); FSDP divides
weights, gradients and optimizer state by the world size and gathers one block at a time, cast
to the compute dtype.

Activations are the tensors autograd saves, counted per token and layer for the default block
(checked against saved-tensor hooks): the residual stream stays fp32 under autocast, so the two norm
inputs are 4 bytes; q, k, v, their rotated copies, the attention output and the normed inputs are
in the compute dtype; SwiGLU keeps four hidden-sized tensors (gate, up, activated gate, product),
a GELU MLP two; attention keeps one fp32 log-sum-exp per head. The chunked loss keeps the output
head's fp32 gradient from forward to backward, and under autocast every matmul weight is cached in
the compute dtype for the whole forward. Measured against: the default (llama) causal block. Other
families are counted with their feed-forward's saved tensors.

With a large vocabulary the logits dominate (a 250k vocabulary at dim 16: ten times everything
else). The chunked loss holds two chunks of [rows x vocabulary] logits at its peak (the next one is
computed while the last one's buffers are still referenced), fp32 plus compute-dtype copies under
autocast; a masked LM computes full logits at its masked positions, and the backward of its
cross-entropy holds three fp32 [masked x vocabulary] tensors at once (the saved log-softmax, the
incoming gradient and the outgoing one)."""
import math
from dataclasses import dataclass

import torch

from model import LMConfig, Transformer
from training.parallelism.strategies import STRATEGIES

FFN_SAVED = {"swiglu": 4, "gelu": 2, "gelu_tanh": 2}  # hidden-sized tensors a feed-forward saves


def meta_model(cfg: LMConfig) -> Transformer:
    """The model with shapes but no storage: counting a 70B model costs nothing."""
    with torch.device("meta"):
        return Transformer(cfg)


def body_matmul_params(cfg: LMConfig) -> int:
    """Weights of the blocks' matmuls (what autocast caches in the compute dtype)."""
    d, kv = cfg.dim, cfg.n_kv_heads * cfg.head_dim
    ffn = (3 if cfg.feed_forward == "swiglu" else 2) * d * cfg.ffn_dim
    return cfg.n_layers * (2 * d * d + 2 * d * kv + ffn)


def layer_activation_bytes_per_token(cfg: LMConfig, compute_bytes: int) -> int:
    d, kv = cfg.dim, cfg.n_kv_heads * cfg.head_dim
    return 2 * d * 4 + (5 * d + 3 * kv + FFN_SAVED[cfg.feed_forward] * cfg.ffn_dim) * compute_bytes + 4 * cfg.n_heads


@dataclass
class Estimate:
    params: int
    weights: int           # bytes per rank, each
    gradients: int
    optimizer: int
    ema: int
    buckets: int           # DDP's gradient buckets
    gathered: int          # FSDP: the root's parameters and one block (and the next) unsharded
    activations: int       # saved for backward, gradient checkpointing as configured
    logits: int            # the loss's vocabulary-sized tensors at their peak
    activations_other: int  # the same with the checkpointing switch flipped
    peak: int              # the estimated peak of a step
    flops_per_token: float

    def rows(self):
        return [("weights", self.weights), ("gradients", self.gradients), ("optimizer state", self.optimizer),
                ("EMA", self.ema), ("DDP gradient buckets", self.buckets), ("FSDP gathered blocks", self.gathered),
                ("activations", self.activations), ("loss logits", self.logits)]


def activation_bytes(cfg: LMConfig, tokens: int, compute_bytes: int, checkpointing: bool,
                     weight_cache: bool = True) -> int:
    """Saved tensors of one micro-batch of `tokens` tokens, plus the backward's working set (the
    gradients flowing through one feed-forward: one hidden-sized tensor fewer than it saved)."""
    working = tokens * (FFN_SAVED[cfg.feed_forward] - 1) * cfg.ffn_dim * compute_bytes
    head = cfg.vocab_size * cfg.dim * 4 if cfg.causal else 0  # the chunked loss's fp32 head gradient
    cache = 2 * body_matmul_params(cfg) if compute_bytes == 2 and weight_cache else 0  # FSDP gathers them cast
    layer = layer_activation_bytes_per_token(cfg, compute_bytes) * tokens
    outside = tokens * (cfg.dim * 4 + cfg.dim * compute_bytes + 16)  # final norm input, hidden gradient, ids
    if checkpointing:  # block inputs only (fp32 residual), one block recomputed at a time in backward
        return head + cache + outside + cfg.n_layers * tokens * cfg.dim * 4 + layer + working
    return head + cache + outside + cfg.n_layers * layer + working


def logits_bytes(cfg: LMConfig, tokens: int, compute_bytes: int, head_fraction: float = 1.0,
                 chunk_rows: int = 256) -> int:
    """The vocabulary-sized tensors alive at the loss's peak (at the end of the forward for the
    chunked causal loss, at the start of the backward for a masked LM's), activations aside."""
    low = compute_bytes if compute_bytes != 4 else 0  # autocast's copy beside the fp32 logits
    if not cfg.causal:
        masked = math.ceil(head_fraction * tokens)
        return masked * cfg.vocab_size * (12 + low)
    rows = min(tokens, chunk_rows)
    chunks = math.ceil(tokens / chunk_rows)
    return rows * cfg.vocab_size * (4 + low) * (2 if chunks > 1 else 1)


def estimate(cfg: LMConfig, batch_size: int, world_size: int = 1, strategy: str = "single",
             compute_bytes: int = 4, use_ema: bool = False, accumulation_steps: int = 1,
             head_fraction: float = 1.0, chunk_rows: int = 256) -> Estimate:
    """chunk_rows: the chunked loss's rows per chunk on the run's device (model.losses)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    model = meta_model(cfg)
    p = model.num_params()
    shard = world_size if strategy == "fsdp" else 1
    weights, grads, optim = 4 * p // shard, 4 * p // shard, 8 * p // shard
    ema = 4 * p // shard if use_ema else 0
    buckets = 4 * p if strategy == "ddp" and world_size > 1 else 0
    gathered, fsdp = 0, strategy == "fsdp" and world_size > 1
    if fsdp:
        # Gathered in the compute dtype (training/parallelism/strategies.py's MixedPrecisionPolicy): the root's own
        # parameters (embeddings, head) for the whole step, a block and the next one prefetched.
        block = max(sum(q.numel() for q in layer.parameters()) for layer in model.layers)
        root = p - sum(q.numel() for q in model.layers.parameters())
        gathered = (root + 2 * block) * compute_bytes
    tokens = batch_size * cfg.max_seq_len
    acts = activation_bytes(cfg, tokens, compute_bytes, cfg.gradient_checkpointing, weight_cache=not fsdp)
    other = activation_bytes(cfg, tokens, compute_bytes, not cfg.gradient_checkpointing, weight_cache=not fsdp)
    # Gradients are None between steps (zero_grad(set_to_none)) with one micro-step: early in backward
    # the activations are all alive, at the optimizer step all the gradients. Either moment also holds
    # one more head-sized fp32 gradient: the loss hands back a copy of the one it stored, and the
    # embedding's own gradient is summed into it at the end. With accumulation, the gradients of
    # earlier micro-steps live through the forward.
    # The logits come and go inside the loss, while every activation is alive.
    fixed = weights + optim + ema + buckets + gathered
    head = cfg.vocab_size * cfg.dim * 4
    logits = logits_bytes(cfg, tokens, compute_bytes, head_fraction, chunk_rows)
    if accumulation_steps > 1:
        peak = fixed + grads + acts + logits
    else:
        peak = fixed + max(grads + head, acts + max(head, logits))
    return Estimate(params=p, weights=weights, gradients=grads, optimizer=optim, ema=ema, buckets=buckets,
                    gathered=gathered, activations=acts, logits=logits, activations_other=other, peak=peak,
                    flops_per_token=model.flops_per_token(head_fraction))
