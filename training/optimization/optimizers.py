"""Optimizers by name. An entry says which class it builds and how it treats weight decay; a new
optimizer is one new entry (and its test). Norms, biases (and embeddings unless asked) never decay."""
from dataclasses import dataclass

import torch
from torch import nn

from training.optimization.muon import MuonAdamW, newton_schulz_flops


@dataclass(frozen=True)
class OptimizerSpec:
    cls: type
    decoupled_decay: bool  # True: AdamW-style decay; False: decay would be L2 added to the gradient
    help: str


OPTIMIZERS = {
    "adamw": OptimizerSpec(torch.optim.AdamW, True, "Adam with decoupled weight decay (the usual choice)"),
    "adam": OptimizerSpec(torch.optim.Adam, False, "plain Adam; refuses weight_decay > 0, which Adam would "
                                                    "apply as L2 through its moments, not as AdamW's decay"),
    "muon": OptimizerSpec(MuonAdamW, True, "Muon (orthogonalised Nesterov momentum) for the blocks' weight "
                                           "matrices at muon_lr, AdamW for embeddings (embedding_lr), the output "
                                           "head (head_lr) and norms, biases and the rest (learning_rate)"),
}


def check_settings(t) -> str:
    """'' when the optimizer settings make sense, else one line naming the key."""
    if t.optimizer_type not in OPTIMIZERS:
        return f"train.optimizer_type must be one of {', '.join(OPTIMIZERS)}, got {t.optimizer_type!r}"
    if not OPTIMIZERS[t.optimizer_type].decoupled_decay and t.weight_decay > 0:
        return (f"train.optimizer_type {t.optimizer_type} would apply weight_decay {t.weight_decay:g} as coupled L2, "
                "a different regulariser from AdamW's decay: pass --weight_decay 0 or use --optimizer_type adamw")
    if not 0 <= t.beta1 < 1 or not 0 <= t.beta2 < 1:
        return f"train.beta1 and train.beta2 must be in [0, 1), got {t.beta1}, {t.beta2}"
    if not t.adam_eps > 0:
        return f"train.adam_eps must be positive, got {t.adam_eps}"
    if not t.weight_decay >= 0:
        return f"train.weight_decay must be >= 0, got {t.weight_decay}"
    if t.optimizer_type != "muon":
        given = [k for k in ("embedding_lr", "head_lr") if getattr(t, k) is not None]
        if given:
            return (f"train.{given[0]} sets a Muon run's AdamW group; with --optimizer_type {t.optimizer_type} "
                    "every parameter trains at train.learning_rate: drop it or pass --optimizer_type muon")
        return ""
    if not t.muon_lr > 0:
        return f"train.muon_lr must be positive, got {t.muon_lr}"
    if not 0 <= t.muon_momentum < 1:
        return f"train.muon_momentum must be in [0, 1), got {t.muon_momentum}"
    for key in ("embedding_lr", "head_lr"):
        value = getattr(t, key)
        if value is not None and not value > 0:
            return f"train.{key} must be positive (or unset: train.learning_rate), got {value}"
    return ""


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


def muon_groups(model: nn.Module, t) -> list:
    """Muon: the 2-D weights inside the blocks (model.layers: attention and feed-forward
    projections). AdamW: embeddings at embedding_lr, the untied output layer (model.output) at
    head_lr, everything else (norms, biases, scalars, task heads) at learning_rate. Each group's
    lr_scale is its rate over learning_rate: the schedule multiplies all of them by one factor."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    blocks = getattr(model, "layers", None)  # a model without blocks: AdamW throughout
    block_ids = {id(p) for p in blocks.parameters()} if isinstance(blocks, nn.Module) else set()
    output = getattr(model, "output", None)
    head_ids = {id(p) for p in output.parameters()} if isinstance(output, nn.Module) else set()
    base = t.learning_rate
    rates = {"muon": t.muon_lr, "embedding": t.embedding_lr or base, "head": t.head_lr or base,
             "decay": base, "no_decay": base}
    members = {k: [] for k in rates}
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # a tied head is the embedding, listed once
        if id(p) in embedding_ids:
            members["embedding"].append(p)
        elif id(p) in block_ids and p.ndim == 2:
            members["muon"].append(p)
        elif id(p) in head_ids:
            members["head"].append(p)
        else:
            members["decay" if p.ndim >= 2 else "no_decay"].append(p)
    decays = {"muon": t.weight_decay, "embedding": t.weight_decay if t.decay_embeddings else 0.0,
              "head": t.weight_decay, "decay": t.weight_decay, "no_decay": 0.0}
    return [{"params": members[k], "name": k, "kind": "muon" if k == "muon" else "adamw", "lr": rates[k],
             "lr_scale": rates[k] / base, "weight_decay": decays[k]} for k in rates if members[k]]


def fused_rows(model: nn.Module) -> dict:
    """{weight: row counts} of the Linear layers that stack several projections (fused_rows)."""
    return {m.weight: m.fused_rows for m in model.modules()
            if isinstance(m, nn.Linear) and getattr(m, "fused_rows", None)}


def describe_muon(optimizer, flops_per_step: float) -> str:
    """One line: the Newton-Schulz iteration's FLOPs per step (every rank runs it on whole
    matrices) against the step's forward and backward FLOPs on one rank."""
    shapes = optimizer.muon_shapes()
    ns = sum(newton_schulz_flops(s) for s in shapes)
    share = ns / flops_per_step if flops_per_step > 0 else float("nan")
    return (f"muon: Newton-Schulz on {len(shapes)} matrices costs {ns / 1e9:.3g} GFLOP per step, "
            f"{100 * share:.2g}% of the step's {flops_per_step / 1e9:.3g} GFLOP (more at smaller batches)")


def build_optimizer(model: nn.Module, t, device: torch.device) -> torch.optim.Optimizer:
    if t.optimizer_type == "muon":
        return MuonAdamW(muon_groups(model, t), lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.adam_eps,
                         momentum=t.muon_momentum, fused_rows=fused_rows(model))
    groups = param_groups(model, t.weight_decay, t.decay_embeddings)
    cls = OPTIMIZERS[t.optimizer_type].cls
    kwargs = dict(lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    # The fused kernel is several times faster (CUDA and recent CPU builds); fall back where absent.
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, **kwargs)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Fused Adam(W) honours optimizer.found_inf: it can skip a step without the host looking."""
    return bool(optimizer.defaults.get("fused"))


@torch.no_grad()
def allocate_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state tensors (placed and sharded like their parameters) so that a
    checkpoint can be read into them in place, as DCP does. One step with zero gradients at
    learning rate 0 leaves every parameter bit-identical; the loaded state then replaces it all."""
    if optimizer.state:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
