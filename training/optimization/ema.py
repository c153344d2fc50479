"""Exponential moving average of the weights, kept in fp32 beside the model (under FSDP each rank
keeps the averages of its own shards: the shadows are DTensors sharded as the weights are).

Warm-up: the decay used for the t-th update (t counted from 0) is min(decay, (1 + t) / (10 + t)),
so the first updates move the average most of the way to the weights (0.1, 0.18, 0.25, ...) and
the configured decay rules only once (1 + t) / (10 + t) passes it (t ~ 9,000 for 0.999). Without
it a short run's average is still mostly the random initial weights.

State: `state_dict()` holds only name -> fp32 tensor, under the model's own state-dict names, so a
checkpoint's "ema" entry loads with torch.load(weights_only=True) and drops straight into
`model.load_state_dict`. The update count, which the warm-up depends on, is a part of its own
(`counter`, saved beside it) so a resumed run continues the same decays."""
import contextlib

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / DataParallel (.module) and torch.compile (._orig_mod) wrappers,
    so shadow names never carry a "module." or "_orig_mod." prefix."""
    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _floating(model) -> dict:
    # state_dict() gives detached views of the live parameters and persistent buffers: reading
    # them sees the current weights and copy_ into them writes the weights in place.
    return {k: v for k, v in unwrap(model).state_dict().items() if v.is_floating_point()}


class EMA:
    """shadow <- d * shadow + (1 - d) * weight after every optimizer step, d = decay_at(num_updates)."""

    def __init__(self, model, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.num_updates = float(decay), 0
        tensors = _floating(model)
        self.shadow, first = {}, {}
        for name, t in tensors.items():
            # Names that alias one tensor (tied weights) share one shadow, averaged once.
            # A DTensor (FSDP) shard holds the pointer; an empty shard has none and aliases nothing.
            local = t.to_local() if hasattr(t, "to_local") else t
            key = (local.data_ptr() or id(t), tuple(t.shape), t.stride(), t.dtype)
            if key in first:
                self.shadow[name] = self.shadow[first[key]]
            else:
                first[key] = name
                self.shadow[name] = t.detach().to(dtype=torch.float32, copy=True)
        self._unique = list(first.values())
        self.counter = _Counter(self)

    def decay_at(self, t: int) -> float:
        """The decay of update number t (from 0): warmed up, never above the configured decay."""
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model, gate=None) -> None:
        """gate: None, or a 0-dim device tensor, 1.0 to apply this update and 0.0 to leave the
        averages as they are, decided on the device (a skipped step needs no host sync)."""
        live = _floating(model)
        shadow = [self.shadow[k] for k in self._unique]
        current = [live[k].float() for k in self._unique]  # a no-op for fp32 weights
        weight = 1.0 - self.decay_at(self.num_updates)
        # lerp(s, w, 1 - d) = d * s + (1 - d) * w, one fused pass over every tensor
        if gate is None:
            torch._foreach_lerp_(shadow, current, weight)
        else:  # the count (host side) moves on a skipped step too: the warm-up follows the steps
            torch._foreach_lerp_(shadow, current, [gate.float() * weight] * len(shadow))
        self.num_updates += 1

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for k in self._unique:
            if state[k].shape != self.shadow[k].shape:
                raise ValueError(f"EMA state {k}: shape {tuple(state[k].shape)}, "
                                 f"the model has {tuple(self.shadow[k].shape)}")
        with torch.no_grad():
            for k in self._unique:
                self.shadow[k].copy_(state[k])

    @torch.no_grad()
    def copy_to(self, model) -> None:
        """Overwrite the model's weights with the averages (cast to the model's dtype)."""
        live = _floating(model)
        for k in self._unique:
            live[k].copy_(self.shadow[k])

    @contextlib.contextmanager
    def swap_into(self, model):
        """Evaluate with the averaged weights, then put the trained weights back bit for bit,
        even when the body raises."""
        live = _floating(model)
        saved = {k: live[k].detach().clone() for k in self._unique}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    live[k].copy_(v)


class _Counter:
    """The EMA's update count as a checkpoint part. The decay is not restored: a resumed run may
    change --ema_decay, and the count alone places it on the warm-up."""

    def __init__(self, ema: EMA):
        self.ema = ema

    def state_dict(self) -> dict:
        return {"num_updates": self.ema.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.num_updates = int(state["num_updates"])
