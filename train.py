"""Train a causal or masked language model.

    python train.py                                   # the embedded default (config.yaml)
    python train.py --config config.yaml --batch_size 64 --lr_scheduler polynomial --use_ema
    torchrun --nproc_per_node=4 train.py --config config.yaml --ddp
    torchrun --nproc_per_node=4 train.py --config config.yaml --fsdp    # sharded model and checkpoints
    python train.py --config config.yaml --resume [--resume_from out/<run>/checkpoint_step_N.pth]
"""
import contextlib
import os
import sys

import torch

from utils import check_writable_dir, run_cli


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "LOCAL_RANK" in os.environ:  # a torchrun rank: it stops when torchrun dies
        from training.signals import exit_with_launcher
        exit_with_launcher()
    from training.config import build_config

    cfg = build_config(argv, default_config="config.yaml" if os.path.exists("config.yaml") else None)
    if "OMP_NUM_THREADS" not in os.environ:  # the user's setting wins; else share the cores between ranks
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    with claim_outputs(cfg):
        return _train(cfg)


def _train(cfg) -> int:
    from training.parallelism import distributed
    info, device = distributed.setup(cfg.train.parallel != "single", cfg.train.device,
                                     flag="--fsdp" if cfg.train.parallel == "fsdp" else "--ddp")
    try:
        from training.loop import Trainer, TrainingStopped
        from training.plan import build_plan
        trainer = Trainer(build_plan(cfg, info), info, device)
        try:
            summary = trainer.train()
        except TrainingStopped as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if info.is_main and summary["outcome"] == "nothing_to_do":
            print(f"nothing to do: {summary['resumed_from']} is at step {summary['step']} and the run is "
                  f"{summary['max_steps']} steps long (--max_steps or --epochs); lengthen it to train on")
        elif info.is_main:
            _print_summary(summary)
            from training.reporting.plot import plot_run
            plot_run(summary["run_dir"])
        # Ranks leave together: one tearing down its process group while another still writes or
        # plots made gloo abort that rank at exit now and then ("terminate called ...").
        distributed.barrier(info)
        return 0
    finally:
        distributed.teardown(info)


def claim_outputs(cfg):
    """The run directory locked for this run (rank 0 holds the lock, for every rank) and every
    directory the run writes to proven writable, before any work; the lock is the returned context."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    from training.run_lock import RunLock
    run_dir = os.path.join(cfg.train.out_dir, cfg.train.run_name)
    lock = RunLock(run_dir).acquire()  # first: a directory another run holds is not touched at all
    try:
        check_writable_dir(run_dir, "--out_dir")
        if not cfg.data.train_bin:
            check_writable_dir(cfg.data.out_dir, "--data.out_dir")
    except BaseException:
        lock.release()
        raise
    return lock


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
    written = s["written"]
    steps = [n for n in written if n.startswith("checkpoint_step_")]
    if len(steps) > 3:  # a long run with a large train.keep_last: the first and the last say enough
        at = written.index(steps[0])
        written = written[:at] + [f"{len(steps)} checkpoints {steps[0]} ... {steps[-1]}"] + written[at + len(steps):]
    lines.append(f"wrote {s['run_dir']}/ ({', '.join(written)})")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(run_cli(main))
