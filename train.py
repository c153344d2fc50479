"""Train a causal or masked language model.

    python train.py                                   # the embedded default (config.yaml)
    python train.py --config config.yaml --batch_size 64 --lr_scheduler polynomial --use_ema
    torchrun --nproc_per_node=4 train.py --config config.yaml --ddp
    torchrun --nproc_per_node=4 train.py --config config.yaml --fsdp    # sharded model and checkpoints
    python train.py --config config.yaml --resume [--resume_from out/<run>/checkpoint_step_N.pth]
"""
import os
import sys

import torch

from utils import check_writable_dir, run_cli


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from training.config import build_config
    from training import distributed

    cfg = build_config(argv, default_config="config.yaml" if os.path.exists("config.yaml") else None)
    if "OMP_NUM_THREADS" not in os.environ:  # the user's setting wins; else share the cores between ranks
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    check_outputs(cfg)
    info, device = distributed.setup(cfg.train.ddp or cfg.train.fsdp, cfg.train.device,
                                     flag="--fsdp" if cfg.train.fsdp else "--ddp")
    try:
        from training.loop import Trainer, TrainingStopped
        trainer = Trainer(cfg, info, device)
        try:
            summary = trainer.train()
        except TrainingStopped as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if info.is_main:
            _print_summary(summary)
            from training.plot import plot_run
            plot_run(summary["run_dir"])
        # Ranks leave together: one tearing down its process group while another still writes or
        # plots made gloo abort that rank at exit now and then ("terminate called ...").
        distributed.barrier(info)
        return 0
    finally:
        distributed.teardown(info)


def check_outputs(cfg) -> None:
    """Every directory the run writes to, proven writable before any work."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    check_writable_dir(os.path.join(cfg.train.out_dir, cfg.train.run_name), "--out_dir")
    if not cfg.data.train_bin:
        check_writable_dir(cfg.data.out_dir, "--data.out_dir")


def _print_summary(s: dict) -> None:
    lines = [f"{s['outcome']} at step {s['step']} in {s['seconds']:.0f}s"]
    if s["best_step"] >= 0:
        lines.append(f"best validation loss {s['best_val_loss']:.4f} (step {s['best_step']})")
    elif not s.get("has_validation", True):
        lines.append("no validation data: nothing evaluated, no best.pth")
    else:
        lines.append("no evaluation yet (the first comes at train.eval_interval): no best.pth")
    if "val_bpb" in s:
        lines.append(f"final validation bits per byte {s['val_bpb']:.3f}")
    if "val_mlm_accuracy" in s:
        lines.append(f"final masked-token accuracy {s['val_mlm_accuracy']:.3f}")
    best = "best.pth, " if s["best_step"] >= 0 else ""
    sharded = any(n.endswith(".dcp") for n in os.listdir(s["run_dir"]))  # --fsdp writes directories
    lines.append(f"wrote {s['run_dir']}/ ({best}checkpoint_step_*.{'dcp' if sharded else 'pth'}, metrics.jsonl, "
                 "tokenizer.json, config.yaml)")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(run_cli(main))
