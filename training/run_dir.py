"""The run directory's files outside checkpoints: which checkpoint a run resumes from, and what a
start leaves in the directory (stale temporaries removed, a fresh start's old log gone, the
tokenizer and config written, a resumed run's metrics cut back to its step)."""
import json
import os

import checkpoint as ckpt
from data.hf_tokenizer import save_roles
from model.config import ConfigError
from training.config import dump_yaml
from utils import read_jsonl_records, remove_stale_temporaries


def find_resume_path(t, run_dir: str, is_main: bool):
    """The checkpoint to resume (train.resume_from, or the newest with --resume), or None for a
    fresh start; a directory with checkpoints and neither --resume nor --force-fresh is refused."""
    if t.resume_from:
        return t.resume_from
    if t.resume:
        path = ckpt.latest_checkpoint(run_dir)
        if path is None:
            raise ConfigError(f"--resume: no checkpoint in {run_dir}; drop --resume to start a new run")
        return path
    if is_main and (ckpt.step_checkpoints(run_dir) or ckpt.interrupted_checkpoints(run_dir)):
        if not t.force_fresh:
            raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue "
                              "or --force-fresh to start over (its checkpoints will be removed)")
    return None


def prepare_run_dir(run_dir: str, cfg, tokenizer, resume_path, step: int, say) -> None:
    os.makedirs(run_dir, exist_ok=True)
    stale = remove_stale_temporaries(run_dir)
    if stale:
        say(f"removed {stale} temporary file(s) left by checkpoint writes that were killed midway")
    if not resume_path:
        removed = ckpt.remove_run_checkpoints(run_dir) if cfg.train.force_fresh else 0
        if removed:
            say(f"--force-fresh: removed {removed} checkpoint(s) from {run_dir}")
        # A fresh start owns a fresh log (a run killed before its first checkpoint left one behind).
        old = [n for n in ("metrics.jsonl", ckpt.BEST) if os.path.exists(os.path.join(run_dir, n))]
        for name in old:
            os.remove(os.path.join(run_dir, name))
        if old and not removed:
            say(f"fresh start: removed {', '.join(old)} of an earlier run that left no checkpoint")
    tokenizer.save(os.path.join(run_dir, "tokenizer.json"))
    if not tokenizer.is_default:
        save_roles(tokenizer, run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(dump_yaml(cfg))
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if resume_path and os.path.exists(metrics):
        truncate_metrics(metrics, step)


def truncate_metrics(path: str, step: int) -> None:
    """Drop records logged after the checkpoint we resume from, so the file reads as one run."""
    keep = [r for r in read_jsonl_records(path) if r.get("step", 0) <= step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
