"""Draw a data build's statistics (<name>.stats.json) as a PNG beside it (<name>.stats.png): the
document-length histogram, the documents rejected by reason, and the tokens of each split.

    python -m data.stats_plot dataset/sample/train.stats.json     # prints the PNG's path

The data build draws it by itself; matplotlib is optional there (one line says it is missing).
Exit codes: 0 drawn, 1 matplotlib is not installed, 2 no such statistics file."""
import json
import os
import sys

_said_missing = False  # a sharded build finalizes many pieces: say it once


def png_path(stats_path: str) -> str:
    root = stats_path[:-len(".json")] if stats_path.endswith(".json") else stats_path
    return root + ".png"


def _canvas():
    """A bare Figure on the Agg canvas (no display, pyplot's backend untouched); None without matplotlib."""
    global _said_missing
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _said_missing:
            print("info: no .stats.png picture of the data statistics: matplotlib is not installed "
                  "(pip install matplotlib)")
            _said_missing = True
        return None
    fig = Figure(figsize=(12, 4))
    FigureCanvasAgg(fig)
    return fig


def draw(fig, stats: dict) -> None:
    """The three panels on fig, from the "statistics" object of a .stats.json."""
    ax_len, ax_rej, ax_split = fig.subplots(1, 3, gridspec_kw={"width_ratios": (3, 2, 1.3)})
    hist = stats["tokens_per_document"]["log2_histogram"]
    ax_len.bar(range(len(hist)), [h["documents"] for h in hist], color="tab:blue")
    ax_len.set_xticks(range(len(hist)), [f"≤{h['up_to_tokens']:,}" for h in hist], rotation=45, ha="right",
                      fontsize=8)
    ax_len.set_xlabel("tokens per document (log2 buckets)")
    ax_len.set_ylabel("documents")
    ax_len.set_title(f"{stats['documents_kept']:,} documents kept of {stats['documents_read']:,} read")
    rejected = {k: v for k, v in stats["rejected"].items() if v}
    if rejected:
        names = sorted(rejected, key=rejected.get)
        ax_rej.barh(names, [rejected[n] for n in names], color="tab:red")
        ax_rej.set_xlabel("documents")
    else:
        ax_rej.text(0.5, 0.5, "none rejected", ha="center", va="center", transform=ax_rej.transAxes)
        ax_rej.set_xticks([]), ax_rej.set_yticks([])
    ax_rej.set_title(f"rejected: {sum(rejected.values()):,}")
    splits = stats["splits"]
    names = list(splits)
    bars = ax_split.bar(names, [splits[n]["tokens"] for n in names], color=["tab:green", "tab:orange"][:len(names)])
    ax_split.bar_label(bars, [f"{splits[n]['tokens']:,}" for n in names], fontsize=8)
    ax_split.margins(y=0.15)  # room for the counts above the bars
    ax_split.set_ylabel("tokens")
    ax_split.set_title("tokens per split")


def write_png(stats_path: str):
    """Draw stats_path's statistics to its .png and return the PNG's path; None without matplotlib."""
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)["statistics"]
    fig = _canvas()
    if fig is None:
        return None
    draw(fig, stats)
    fig.suptitle(os.path.basename(stats_path))
    fig.tight_layout()
    path = png_path(stats_path)
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)  # a kill mid-write never leaves a cut picture
    return path


def main(argv) -> int:
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if len(argv) != 1:
        print("usage: python -m data.stats_plot <name>.stats.json", file=sys.stderr)
        return 2
    try:
        path = write_png(argv[0])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {argv[0]} is not a readable .stats.json ({type(e).__name__}: {str(e)[:100]})", file=sys.stderr)
        return 2
    if path is None:
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
