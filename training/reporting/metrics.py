"""Run metrics: metrics.jsonl always, TensorBoard and wandb when asked and available.

Only rank 0 logs (the others pass enabled=False and touch nothing). The optional sinks never stop
or block a run: a missing package, a broken install or no network gives one warning line and the
run goes on with metrics.jsonl alone.

metrics.jsonl: one JSON object per line, exactly the keys given. Tensors and numpy scalars are
written as plain numbers; a non-finite float is written as NaN / Infinity, which Python's json
(and so training.reporting.plot) reads back.

A resumed run (start_step: the checkpoint's step; 0 for a fresh start) logs each step once:
TensorBoard purges the events after start_step that the earlier run wrote (they are replayed),
and wandb continues the same run, whose id is kept in the run directory (wandb_run_id). wandb
drops a replayed step it already holds; a resume is exact, so the values it keeps are the same."""
import errno
import json
import os
import secrets
import sys

import torch

from utils import OutputError


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _brief(e: Exception) -> str:
    """An exception as one short line: library errors often span many."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:100]}" if lines else type(e).__name__


def _plain(value):
    """A JSON-ready value: one-element tensors and numpy scalars become Python numbers."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


WANDB_ID_FILE = "wandb_run_id"


class MetricsLogger:
    def __init__(self, run_dir, enabled=True, tensorboard=False, wandb=False, wandb_project=None,
                 wandb_run_name=None, config=None, start_step=None):
        self.enabled, self.file, self.tb, self.wandb = enabled, None, None, None
        self.logged = 0  # records written to metrics.jsonl
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        # Append: a resumed run continues the same file (the loop trims records past the checkpoint).
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self.tb = self._start_tensorboard(run_dir, start_step)
        if wandb:
            self.wandb = self._start_wandb(run_dir, wandb_project, wandb_run_name, config, start_step)

    @staticmethod
    def _start_tensorboard(run_dir, start_step):
        # purge_step: TensorBoard's reader drops the events of steps >= it written before this
        # writer (an earlier run's, or the steps a resume replays).
        purge = {} if start_step is None else {"purge_step": start_step + 1}
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            return SummaryWriter(os.path.join(run_dir, "tensorboard"), **purge)
        except Exception as e:
            _warn(f"TensorBoard logging is off ({_brief(e)}); pip install tensorboard")
            return None

    @staticmethod
    def _wandb_run_id(run_dir, start_step) -> dict:
        """id (and resume) for wandb.init: a resumed run reuses the id its run directory holds; a
        fresh start (or a run directory without one) draws a new id and keeps it there."""
        path = os.path.join(run_dir, WANDB_ID_FILE)
        if start_step and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                run_id = f.read().strip()
            if run_id.isalnum():
                return {"id": run_id, "resume": "allow"}
        run_id = secrets.token_hex(4)  # lowercase letters and digits, as wandb ids are
        with open(path, "w", encoding="utf-8") as f:
            f.write(run_id + "\n")
        return {"id": run_id, "resume": "allow"}

    @classmethod
    def _start_wandb(cls, run_dir, project, name, config, start_step):
        try:
            import wandb
        except Exception:  # not installed, or an install that fails on import
            _warn("wandb logging is off: pip install wandb")
            return None
        # Offline unless the user chose a mode (WANDB_MODE=online): a run on a machine without
        # network must never wait on it. `wandb sync` uploads an offline run later.
        kwargs = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        try:
            kwargs["settings"] = wandb.Settings(init_timeout=60)  # online and unreachable: give up soon
        except Exception:
            pass  # an older wandb without this setting
        try:
            if start_step is not None:
                kwargs.update(cls._wandb_run_id(run_dir, start_step))
            return wandb.init(project=project or "pretrain", name=name, config=config, dir=run_dir, **kwargs)
        except Exception as e:
            _warn(f"wandb logging is off ({_brief(e)})")
            return None

    def log(self, record: dict) -> None:
        if not self.enabled or self.file is None:
            return
        record = {k: _plain(v) for k, v in record.items()}
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()  # a killed run keeps every record logged so far
        except OSError as e:
            self._give_up_file()
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            raise OutputError(f"{'no space left' if full else 'cannot write'} appending to {self.path} at step "
                              f"{record.get('step')} ({e.strerror or e}); the records and checkpoints written so far "
                              f"are intact: {'free some space and ' if full else ''}resume with --resume") from None
        self.logged += 1
        if self.tb is None and self.wandb is None:
            return
        step = int(record.get("step", 0))
        prefix = record.get("split", "train")
        scalars = {f"{prefix}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            try:
                self.wandb.log(scalars, step=step)
            except Exception as e:
                _warn(f"wandb logging stopped ({_brief(e)})")
                self.wandb = None

    def _give_up_file(self) -> None:
        """Close a log whose write failed; closing retries the failed flush, whose error was said already."""
        try:
            self.file.close()
        except OSError:
            pass
        self.file = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:
                _warn(f"wandb did not finish cleanly ({type(e).__name__})")
            self.wandb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
