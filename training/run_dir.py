"""The run directory's files outside checkpoints (those are checkpoint/run_files.py's): which
checkpoint a run resumes from, and what a start leaves in the directory (stale temporaries removed,
a fresh start's old log gone, the tokenizer and config written, a resumed run's metrics cut back to
its step)."""
import os

import checkpoint as ckpt
from data.hf_tokenizer import save_roles
from training.config import dump_yaml
from utils import ConfigError, atomic_write, jsonl_objects, remove_stale_temporaries


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


def prepare_run_dir(run_dir: str, cfg, tokenizer, resume_path, step: int, say) -> list:
    """Returns the names of the files it wrote."""
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
    written = ["tokenizer.json"]
    tokenizer.save(os.path.join(run_dir, "tokenizer.json"))
    if not tokenizer.is_default:
        save_roles(tokenizer, run_dir)
        written += ["special_tokens_map.json", "tokenizer_config.json"]
    # Atomic, so a full disk is one line and an earlier config.yaml stays whole.
    atomic_write(os.path.join(run_dir, "config.yaml"), lambda f: f.write(dump_yaml(cfg)), binary=False)
    written.append("config.yaml")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if resume_path and os.path.exists(metrics):
        truncate_metrics(metrics, step)
    return written


def truncate_metrics(path: str, step: int) -> None:
    """Drop records logged after the checkpoint we resume from, so the file reads as one run.
    Written to a temporary and renamed over the log: a kill or a full disk midway leaves the old
    log whole. Kept records keep their bytes; lines a kill cut short go."""
    keep = [line if line.endswith("\n") else line + "\n"
            for line, record in jsonl_objects(path) if record.get("step", 0) <= step]
    atomic_write(path, lambda out: out.writelines(keep), binary=False)

