"""Learning-rate schedules: linear warmup, then cosine / linear / polynomial / constant decay, or
warmup-stable-decay (wsd: peak until the last decay_fraction of the run, then down to min_lr).

`lr_at` is a pure function of the step, so a resumed run only needs the step counter to continue
on exactly the same curve."""
import math
import numbers

# Decay after warmup, by name: the factor (1 at the end of warmup, 0 at the end of the run) for a
# progress in [0, 1]; `power` is the polynomial's exponent. None: no decay at all (base_lr for
# good, min_lr plays no part). "wsd" is a shape from DECAY_SHAPES applied over the run's last
# decay_fraction only (see decay_start). A new schedule is one entry here.
SCHEDULES = {
    "cosine": lambda progress, power: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress, power: 1.0 - progress,
    "polynomial": lambda progress, power: (1.0 - progress) ** power,
    "constant": None,
    "wsd": "decay_shape",
}
# wsd's cooldown shapes; 1-sqrt beat linear in Hagele et al. 2024 ("Scaling Laws and Compute-Optimal
# Training Beyond Fixed Training Durations").
DECAY_SHAPES = {
    "linear": lambda progress: 1.0 - progress,
    "1-sqrt": lambda progress: 1.0 - math.sqrt(progress),
}


def decay_start(warmup_steps: int, total_steps: int, decay_fraction: float) -> int:
    """wsd: the first step of the decay, round(decay_fraction * total_steps) steps (at least one)
    before the end, never inside the warmup."""
    decay_steps = max(1, int(math.floor(decay_fraction * total_steps + 0.5)))
    return max(warmup_steps, total_steps - decay_steps)


def resolve_warmup(warmup, total_steps: int) -> int:
    """Warmup steps from a count (an int >= 1, or an integral float such as 100.0 from a CLI flag)
    or a fraction of the run (a float in [0, 1), rounded half up)."""
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Real) or not math.isfinite(warmup):
        raise ValueError(f"warmup must be a step count or a fraction in [0, 1), got {warmup!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if warmup < 1:  # 0 (int or float) is no warmup either way
        steps = int(math.floor(warmup * total_steps + 0.5))
    elif warmup != int(warmup):
        raise ValueError(f"warmup {warmup} is neither a whole number of steps nor a fraction below 1")
    else:
        steps = int(warmup)
    if total_steps > 0 and steps >= total_steps:
        raise ValueError(f"warmup ({steps} steps) must be shorter than the run ({total_steps} steps)")
    return steps


def _check(kind: str, warmup_steps: int, power: float, decay_fraction: float = 0.2,
           decay_shape: str = "1-sqrt") -> None:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if kind == "wsd" and not 0 < decay_fraction <= 1:
        raise ValueError(f"wsd decay_fraction must be in (0, 1], got {decay_fraction}")
    if kind == "wsd" and decay_shape not in DECAY_SHAPES:
        raise ValueError(f"unknown wsd decay shape {decay_shape!r}; choose one of {', '.join(DECAY_SHAPES)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not power > 0:
        raise ValueError(f"polynomial power must be > 0, got {power}")


def lr_at(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int, kind: str,
          power: float = 1.0, decay_fraction: float = 0.2, decay_shape: str = "1-sqrt") -> float:
    """The learning rate for 0-based optimizer step `step` (the step about to be taken).

    Warmup: base_lr * (step + 1) / warmup_steps, so step 0 already learns and step warmup_steps - 1
    reaches base_lr. Decay: progress 0 at step warmup_steps (wsd: at decay_start) to 1 at step
    total_steps, min_lr from then on. `constant` keeps base_lr after warmup for good: it has no
    decay, so min_lr plays no part."""
    _check(kind, warmup_steps, power, decay_fraction, decay_shape)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay = SCHEDULES[kind]
    if decay is None:
        return base_lr
    if kind == "wsd":
        start = decay_start(warmup_steps, total_steps, decay_fraction)
        if step < start:
            return base_lr
        progress = min(1.0, (step - start) / max(1, total_steps - start))
        return min_lr + (base_lr - min_lr) * DECAY_SHAPES[decay_shape](progress)
    decay_steps = max(1, total_steps - warmup_steps)  # a run no longer than its warmup ends at min_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * decay(progress, power)


class LRScheduler:
    """Sets every parameter group's lr for the coming step, then counts it.

    A group with an "lr_scale" (Muon's groups: their own rates) gets the scheduled rate times it,
    so every group follows the same curve from its own peak (and floor min_lr * lr_scale). The
    scales are read at construction: a resume with other per-group rates uses the new ones.

    Call `step()` once before each optimizer step. The state is the step counter plus the schedule
    it was made with (plain ints, floats and strings, so torch.load(weights_only=True) reads it)."""

    def __init__(self, optimizer, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                 kind: str, power: float = 1.0, decay_fraction: float = 0.2, decay_shape: str = "1-sqrt"):
        _check(kind, warmup_steps, power, decay_fraction, decay_shape)  # fail at construction, not at the first step
        self.optimizer = optimizer
        self.scales = [float(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
        self.schedule = dict(base_lr=base_lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                             kind=kind, power=power)
        if kind == "wsd":  # recorded only where they matter, so other schedules' states stay as they were
            self.schedule.update(decay_fraction=decay_fraction, decay_shape=decay_shape)
        self.step_count = 0
        self.last_lr = 0.0  # the lr set by the latest step(); 0.0 before the first

    @property
    def total_steps(self) -> int:
        return self.schedule["total_steps"]

    @total_steps.setter
    def total_steps(self, value: int) -> None:
        # A resume with another batch or world size has another run length; the curve follows it.
        self.schedule["total_steps"] = value

    def lr(self, step: int) -> float:
        return lr_at(step, **self.schedule)

    def step(self) -> float:
        self.last_lr = self.lr(self.step_count)
        for group, scale in zip(self.optimizer.param_groups, self.scales):
            group["lr"] = self.last_lr * scale  # exact for scale 1.0
        self.step_count += 1
        return self.last_lr

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "last_lr": self.last_lr, "schedule": dict(self.schedule)}

    def load_state_dict(self, state: dict) -> list:
        """Restore the step counter; the schedule stays as constructed (a resume may change it on
        purpose). Returns the names of schedule settings that differ from the saved ones, so a caller
        can say so."""
        self.step_count = int(state["step_count"])
        self.last_lr = self.lr(self.step_count - 1) if self.step_count > 0 else 0.0
        return sorted(k for k, v in state["schedule"].items() if self.schedule.get(k) != v)


def extension_note(saved: dict, current: dict, step: int) -> str:
    """One line when a resumed wsd run is longer than planned (a larger max_steps), else ''. In its
    stable phase it simply continues as if planned that long. Already in its decay, the curve is
    the new run's (lr_at is a function of the step): the rate goes back to the peak until the new,
    later decay start, and the decay restarts there."""
    if current.get("kind") != "wsd" or saved.get("kind") != "wsd":
        return ""
    old_total, new_total = saved.get("total_steps"), current["total_steps"]
    if not isinstance(old_total, int) or new_total <= old_total:
        return ""
    old_start = decay_start(saved["warmup_steps"], old_total, saved.get("decay_fraction", 0.2))
    new_start = decay_start(current["warmup_steps"], new_total, current["decay_fraction"])
    if step < old_start:
        return (f"note: wsd run extended from {old_total} to {new_total} steps in its stable phase (step {step}): "
                f"it continues at the peak rate as if planned that long, decaying from step {new_start}")
    where = "back to the peak rate" if step < new_start else "on the new, longer decay"
    return (f"note: wsd run extended from {old_total} to {new_total} steps at step {step}, inside its decay (from step "
            f"{old_start}): the decay restarts on the new run's curve, {where} now and decaying from step {new_start} "
            f"(for a clean extension resume from a checkpoint before step {old_start})")
