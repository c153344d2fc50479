"""The input files a corpus is made of, from the names and globs given on the command line or in
data.inputs: each glob sorted, each file once, a save_to_disk dataset directory taken as one input."""
import glob
import json
import os

from data.sources.columnar import is_saved_dataset
from data.errors import DataError


def saved_splits(path: str) -> list:
    """The splits of a DatasetDict directory (its dataset_dict.json), found as saved datasets; else []."""
    try:
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as f:
            names = json.load(f).get("splits", [])
    except (OSError, ValueError, AttributeError):
        names = sorted(os.listdir(path)) if os.access(path, os.R_OK) else []
    return [n for n in names if isinstance(n, str) and is_saved_dataset(os.path.join(path, n))]


def expand_inputs(patterns) -> list:
    """Files (or save_to_disk dataset directories) named or matched by globs, in the given order (each
    glob sorted), each once."""
    files = []
    for pattern in ([patterns] if isinstance(patterns, str) else patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise DataError(f"no file matches {pattern!r}")
        for m in matches:
            if os.path.isdir(m) and not is_saved_dataset(m):
                splits = saved_splits(m)
                if splits:
                    raise DataError(f"{m} is a DatasetDict saved by save_to_disk, with splits {', '.join(splits)}: pass "
                                    f"one split's directory, e.g. {os.path.join(m, splits[0])}")
                raise DataError(f"{m} is a directory, not a dataset saved by datasets' save_to_disk (no state.json); "
                                "name its files, or a glob of them")
            if not os.path.isfile(m) and not is_saved_dataset(m):
                raise DataError(f"input file not found: {m}")
            if m not in files:
                files.append(m)
    return files
