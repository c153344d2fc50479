"""The data build draws its statistics beside train.stats.json: length histogram, rejections by
reason, tokens per split; without matplotlib it says so in one line and the build is unchanged."""
import json
import os
import sys

import pytest

import data.stats_plot as stats_plot
from data.build.corpus_processor import DataProcessor
from tests.helpers.data_fixtures import make_tokenizer, write_bad_corpus


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats_plot")
    return make_tokenizer(root), root


def _build(tok, tmp_path, name="out"):
    _, root = tok
    proc = DataProcessor(str(root / "tokenizer.json"), val_ratio=0.3, show_progress=False)
    return proc.process_dataset(write_bad_corpus(tmp_path / "bad.jsonl"), str(tmp_path / name / "train.bin"))


def test_the_build_draws_its_statistics_beside_the_json(tok, tmp_path):
    pytest.importorskip("matplotlib")
    paths = _build(tok, tmp_path)
    png = os.path.join(os.path.dirname(paths["stats"]), "train.stats.png")
    assert stats_plot.png_path(paths["stats"]) == png
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # what is drawn is the file's numbers
    from matplotlib.figure import Figure
    stats = json.load(open(paths["stats"]))["statistics"]
    fig = Figure()
    stats_plot.draw(fig, stats)
    lengths, rejections, splits = fig.axes
    assert [b.get_height() for b in lengths.patches] == [h["documents"] for h in stats["tokens_per_document"]
                                                         ["log2_histogram"]]
    drawn = {t.get_text(): b.get_width() for t, b in zip(rejections.get_yticklabels(), rejections.patches)}
    assert drawn == {"invalid_json": 1, "not_object": 1, "missing_field": 1, "non_string": 1, "empty_text": 1,
                     "invalid_utf8": 2, "contains_nul": 1, "empty_line": 1}
    assert [b.get_height() for b in splits.patches] == [stats["splits"]["train"]["tokens"],
                                                        stats["splits"]["val"]["tokens"]]
    # a rebuild that finds its output complete draws a picture that went missing
    os.remove(png)
    _build(tok, tmp_path)
    assert os.path.exists(png)


def test_without_matplotlib_one_line_and_the_build_is_unchanged(tok, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(stats_plot, "_said_missing", False)
    paths = _build(tok, tmp_path, "a")
    _build(tok, tmp_path, "b")
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if not line.startswith("note: ")]  # (notes: the rejection share)
    assert said == ["info: no .stats.png picture of the data statistics: matplotlib is not installed "
                    "(pip install matplotlib)"]  # said once
    assert os.path.exists(paths["stats"]) and not os.path.exists(stats_plot.png_path(paths["stats"]))
    assert stats_plot.main([paths["stats"]]) == 1


def test_cli(tok, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    paths = _build(tok, tmp_path)
    os.remove(stats_plot.png_path(paths["stats"]))
    capsys.readouterr()  # the build's own output
    assert stats_plot.main([paths["stats"]]) == 0
    assert capsys.readouterr().out.strip() == stats_plot.png_path(paths["stats"])
    assert stats_plot.main([str(tmp_path / "missing.stats.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.stats.json'} is not a readable")
