"""Exponential moving average of the weights, kept in fp32 beside the model."""
import contextlib

import torch


def unwrap(model):
    """The plain module under DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


class EMA:
    def __init__(self, model, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in unwrap(model).state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model) -> None:
        state = unwrap(model).state_dict()
        names = list(self.shadow)
        shadow = [self.shadow[k] for k in names]
        current = [state[k].detach().float() for k in names]
        # shadow <- decay * shadow + (1 - decay) * current, in one fused pass over all tensors
        torch._foreach_lerp_(shadow, current, 1.0 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    @torch.no_grad()
    def copy_to(self, model) -> None:
        state = unwrap(model).state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)

    @contextlib.contextmanager
    def swap_into(self, model):
        """Evaluate with the averaged weights, then put the trained weights back exactly."""
        state = unwrap(model).state_dict()
        saved = {k: state[k].detach().clone() for k in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    state[k].copy_(v)
