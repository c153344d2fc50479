"""Draw a run's curves (train and validation loss, learning rate, gradient norm, against step) to a PNG.

    python -m training.reporting.plot out/<run>      # prints the PNG's path

Exit codes: 0 drawn, 1 matplotlib is not installed, 2 no run directory or nothing to draw."""
import json
import os
import sys

PNG_NAME = "training_curves.png"


def read_metrics(run_dir: str) -> list:
    """The records of run_dir/metrics.jsonl; [] when there is none."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                records.append(record)
    return records


def _series(records, split, key):
    points = [(r["step"], r[key]) for r in records if r.get("split", "train") == split
              and isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str):
    """Write run_dir/training_curves.png and return its path. None, after one line, when
    matplotlib is not installed or the run has nothing to draw (so the end of a run never fails here)."""
    try:
        # A bare Figure on the Agg canvas: no display, and no change to pyplot's global backend
        # for a caller (a notebook) that has its own.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("info: no training_curves.png: matplotlib is not installed (pip install matplotlib)")
        return None
    records = read_metrics(run_dir)
    if not _has_losses(records):
        print(f"info: no training_curves.png: {run_dir} has no loss records in metrics.jsonl")
        return None
    fig = Figure(figsize=(8, 7.5))
    FigureCanvasAgg(fig)
    draw_run(fig, records)
    fig.suptitle(os.path.basename(os.path.normpath(os.path.abspath(run_dir))))
    fig.tight_layout()
    path = os.path.join(run_dir, PNG_NAME)
    fig.savefig(path, dpi=100)
    return path


def draw_run(fig, records) -> None:
    """The three panels on fig: losses, learning rate, gradient norm."""
    train_steps, train_loss = _series(records, "train", "loss")
    eval_steps, eval_loss = _series(records, "eval", "val_loss")
    lr_steps, lr = _series(records, "train", "lr")
    gn_steps, grad_norm = _series(records, "train", "grad_norm")
    ax_loss, ax_lr, ax_gn = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1, 1)})
    if train_steps:
        ax_loss.plot(train_steps, train_loss, lw=1, label="train loss")
    if eval_steps:
        ax_loss.plot(eval_steps, eval_loss, "o-", label="validation loss")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(lr_steps, lr, color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    # Before clipping (what the loop logs); spikes here explain spikes in the loss.
    ax_gn.plot(gn_steps, grad_norm, lw=1, color="tab:red")
    ax_gn.set_ylabel("gradient norm")
    ax_gn.set_xlabel("step")
    ax_gn.grid(alpha=0.3)


def _has_losses(records) -> bool:
    return any(_series(records, split, key)[0] for split, key in (("train", "loss"), ("eval", "val_loss")))


def main(argv) -> int:
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if len(argv) != 1:
        print("usage: python -m training.reporting.plot out/<run>", file=sys.stderr)
        return 2
    run_dir = argv[0]
    if not os.path.isdir(run_dir):
        print(f"error: {run_dir} is not a directory (expected a run directory such as out/<run>)", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        print(f"error: {run_dir} has no metrics.jsonl (is it a run directory?)", file=sys.stderr)
        return 2
    if not _has_losses(read_metrics(run_dir)):
        print(f"error: {run_dir}/metrics.jsonl holds no loss records yet", file=sys.stderr)
        return 2
    path = plot_run(run_dir)
    if path is None:  # matplotlib is missing; plot_run said so
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
