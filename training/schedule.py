"""Learning-rate schedules: linear warmup, then cosine / linear / polynomial / constant decay."""
import math

SCHEDULES = ("cosine", "linear", "polynomial", "constant")


def resolve_warmup(warmup, total_steps: int) -> int:
    """A value >= 1 is a number of steps; a value in [0, 1) is a fraction of the run."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    if total_steps > 0 and steps >= total_steps:
        raise ValueError(f"warmup ({steps} steps) must be shorter than the run ({total_steps} steps)")
    return steps


def lr_at(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int, kind: str,
          power: float = 1.0) -> float:
    """The learning rate of 0-based optimizer step `step`."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        factor = 1.0 - progress
    else:
        factor = (1.0 - progress) ** power
    return min_lr + (base_lr - min_lr) * factor


class LRScheduler:
    """Sets every parameter group's lr for the coming step; state is the step counter."""

    def __init__(self, optimizer, **schedule):
        self.optimizer, self.schedule = optimizer, schedule
        lr_at(0, **schedule)  # validates the kind early
        self.step_count, self.last_lr = 0, 0.0

    @property
    def total_steps(self) -> int:
        return self.schedule["total_steps"]

    @total_steps.setter
    def total_steps(self, value: int) -> None:
        self.schedule["total_steps"] = value

    def step(self) -> float:
        self.last_lr = lr_at(self.step_count, **self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        self.step_count += 1
        return self.last_lr

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.last_lr = state["step_count"], state["last_lr"]
