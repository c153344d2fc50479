"""Optimizer construction: no weight decay on norms, biases (and embeddings unless asked)."""
import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool) -> list:
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear once
        is_embedding = id(p) in embedding_ids
        if p.ndim < 2 or (is_embedding and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, t, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, t.weight_decay, t.decay_embeddings)
    cls = torch.optim.AdamW if t.optimizer_type == "adamw" else torch.optim.Adam
    kwargs = dict(lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=1e-8)
    # The fused kernel is several times faster (CUDA and recent CPU builds); fall back where absent.
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, **kwargs)
