"""Draw a run's curves (train/validation loss and learning rate against step) to a PNG.

    python -m training.plot out/<run>
"""
import json
import os
import sys


def read_metrics(run_dir: str) -> list:
    records = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
    return records


def plot_run(run_dir: str):
    """Write run_dir/training_curves.png; None (after one line) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("info: pip install matplotlib to get training_curves.png")
        return None
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval" and "val_loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    path = os.path.join(run_dir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv) -> int:
    if len(argv) != 1:
        print("usage: python -m training.plot out/<run>", file=sys.stderr)
        return 2
    run_dir = argv[0]
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        print(f"error: {run_dir} has no metrics.jsonl (is it a run directory?)", file=sys.stderr)
        return 2
    path = plot_run(run_dir)
    if path:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
