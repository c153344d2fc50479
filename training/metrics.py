"""Run metrics: metrics.jsonl always, TensorBoard and wandb when asked and available.

Only rank 0 logs; the optional sinks never stop or block a run: a missing package or no network
gives one warning line and the run goes on."""
import json
import os
import sys


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class MetricsLogger:
    def __init__(self, run_dir, enabled=True, tensorboard=False, wandb=False, wandb_project=None,
                 wandb_run_name=None, config=None):
        self.enabled, self.file, self.tb, self.wandb = enabled, None, None, None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except Exception as e:  # tensorboard not installed, or broken
                _warn(f"TensorBoard logging is off ({type(e).__name__}: {e}); pip install tensorboard")
        if wandb:
            self.wandb = self._start_wandb(run_dir, wandb_project, wandb_run_name, config)

    @staticmethod
    def _start_wandb(run_dir, project, name, config):
        try:
            import wandb
        except ImportError:
            _warn("wandb logging is off: pip install wandb")
            return None
        # Offline unless the user chose a mode: a run without network must never wait on it.
        os.environ.setdefault("WANDB_MODE", "offline")
        try:
            return wandb.init(project=project or "pretrain", name=name, config=config, dir=run_dir,
                              settings=wandb.Settings(init_timeout=30))
        except Exception as e:
            _warn(f"wandb logging is off ({type(e).__name__}: {str(e)[:100]})")
            return None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        # json writes NaN/Infinity for non-finite floats; Python's json reads them back.
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record.get("step", 0)
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
                _warn(f"wandb logging stopped ({type(e).__name__})")
                self.wandb = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass
