"""The small parts of a run's state that are not model, optimizer, scheduler, scaler or EMA.

Each saves and restores itself (state_dict / load_state_dict), so a checkpoint is a loop over
parts and a new kind of state is one new part."""
import math

import torch

from checkpoint import CheckpointError
from training.parallelism.distributed import gather_objects
from training.rng import capture_rng, restore_rng
from utils import seed_everything


class Progress:
    """How far the run is: optimizer steps taken and global samples consumed (the data position)."""

    def __init__(self):
        self.step = self.samples_seen = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])


class RNGStreams:
    """Every rank's random generators (dropout, masking noise). Saving is a collective: every rank
    must call state_dict(). Restored on the same world size; on another one each rank reseeds from
    (seed, rank, step), since its old stream has no counterpart (the data position still maps exactly)."""

    def __init__(self, info, seed: int, progress: Progress):
        self.info, self.seed, self.progress = info, seed, progress

    def state_dict(self) -> list:
        return gather_objects(capture_rng(), self.info)

    def load_state_dict(self, states: list) -> None:
        if len(states) == self.info.world_size:
            restore_rng(states[self.info.rank])
        else:
            seed_everything(self.seed + self.info.rank + self.progress.step)


class EarlyStopping:
    """Best validation loss so far and how many evaluations in a row failed to beat it by min_delta."""

    def __init__(self, enabled: bool, patience: int, min_delta: float):
        self.enabled, self.patience, self.min_delta = enabled, patience, min_delta
        self.best_loss, self.best_step, self.bad_evals = math.inf, -1, 0

    def observe(self, loss: float, step: int) -> bool:
        """Record an evaluation; True when it is the new best."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_step = float(state["best_loss"]), int(state["best_step"])
        self.bad_evals = int(state["bad_evals"])


class NaNGuard:
    """Counts steps skipped for a non-finite loss or gradient. The counts live on the device and
    are read by the host only when asked (a log step), so a GPU step needs no sync for them."""

    def __init__(self, max_in_a_row: int, device):
        self.max_in_a_row = max_in_a_row
        self._in_a_row = torch.zeros((), dtype=torch.int64, device=device)
        self._total = torch.zeros((), dtype=torch.int64, device=device)

    def observe(self, finite: torch.Tensor) -> None:
        bad = (~finite).long()
        self._in_a_row.add_(1).mul_(bad)  # +1 on a bad step, back to 0 on a good one
        self._total.add_(bad)

    @property
    def in_a_row(self) -> int:
        return int(self._in_a_row)

    @property
    def total(self) -> int:
        return int(self._total)

    @property
    def should_stop(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self._in_a_row.fill_(int(state["in_a_row"]))
        self._total.fill_(int(state["total"]))


class DataIdentity:
    """What the run's sample order depends on: the training tokens (each shard's name, counts and a
    sample hash, data.samples.token_bin.TokenBin.identity), the window length and the seed, and the batch
    layout. A resume on other tokens is refused (it would continue on other samples without a word);
    another window length, seed or global batch is said in one line each, and applies from here."""

    def __init__(self, train: list, seq_len: int, seed: int, batch_size: int, accumulation_steps: int,
                 world_size: int, say=print):
        self.current = {"train": train, "seq_len": seq_len, "seed": seed,
                        "batch": {"batch_size": batch_size, "accumulation_steps": accumulation_steps,
                                  "world_size": world_size}}
        self.say = say

    def state_dict(self) -> dict:
        return self.current

    def load_state_dict(self, saved: dict) -> None:
        then, now = saved["train"], self.current["train"]
        if [_content(e) for e in then] != [_content(e) for e in now]:
            # (not a ValueError: restore_parts would shorten this line into "does not fit this run")
            raise CheckpointError(f"the training data differs from the checkpoint's ({_difference(then, now)}): resuming would "
                            "continue on other samples; resume on the data it was trained on, or start from its "
                            "weights on this data with --init_from")
        for key, name in (("seq_len", "data.seq_len"), ("seed", "train.seed")):
            if saved[key] != self.current[key]:
                self.say(f"note: {name} {saved[key]} -> {self.current[key]} since the checkpoint: the sample order "
                         "differs from the checkpoint's from here on")
        old, new = saved["batch"], self.current["batch"]
        if old == new:
            return
        layout = f"(batch_size x accumulation_steps x ranks: {_layout(old)} -> {_layout(new)})"
        if _global(old) == _global(new):
            self.say(f"note: the batch is split otherwise than in the checkpoint {layout}; the global batch of "
                     f"{_global(new)} and the samples stay the same")
        else:
            self.say(f"note: the global batch differs from the checkpoint's: {_global(old)} -> {_global(new)} samples "
                     f"per step {layout}; the run continues after the samples already seen, with the new batch")


def _content(entry: dict) -> tuple:
    return entry["n_tokens"], entry["n_docs"], entry["sample_hash"]


def _difference(then: list, now: list) -> str:
    names_then, names_now = [e["name"] for e in then], [e["name"] for e in now]
    missing = [n for n in names_then if n not in names_now]
    added = [n for n in names_now if n not in names_then]
    if missing or added:
        parts = [f"{len(then)} shard(s) then, {len(now)} now"]
        parts += [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                  for label, names in (("missing", missing), ("new", added)) if names]
        return "; ".join(parts)
    changed = [b["name"] for a, b in zip(then, now) if _content(a) != _content(b)]
    detail = "; ".join(f"{b['name']}: {a['n_tokens']} -> {b['n_tokens']} tokens" if a["n_tokens"] != b["n_tokens"]
                       else f"{b['name']}: same size, other tokens" for a, b in zip(then, now) if b["name"] in changed[:3])
    return detail


def _global(batch: dict) -> int:
    return batch["batch_size"] * batch["accumulation_steps"] * batch["world_size"]


def _layout(batch: dict) -> str:
    return f"{batch['batch_size']} x {batch['accumulation_steps']} x {batch['world_size']}"


class StateParts(dict):
    """name -> part; state_dict() of all of them is the body of a checkpoint."""

    def state_dicts(self) -> dict:
        return {name: part.state_dict() for name, part in self.items()}
