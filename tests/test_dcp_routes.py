"""Every route that reads a sharded checkpoint (.dcp): inference.py, evaluate.py, convert.py unshard
and to_hf, train.py --resume_from. A crafted one is refused without running code (a dotted name
walked through an allowed module; an entry declared as bytes, which DCP would unpickle in full), and
a damaged one (a shard file cut, missing or random) is one error line, on each route, in-process."""
import os
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from checkpoint import sharded
import convert
import evaluate
import inference
import train
from tests.helpers.train_harness import write_config
from tests.helpers.train_states import state
from utils import run_cli

ROUTES = ("inference", "evaluate", "unshard", "to_hf", "resume")
CASES = ("dotted", "bytes", "truncated", "missing", "random")


class _RunsCode:
    def __reduce__(self):  # unpickling this runs a shell command that leaves a file behind
        return (os.system, ("touch ran-code",))


def _str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def dotted_pickle() -> bytes:
    """A protocol-4 pickle asking DCP's metadata module for os.system (it imports os), then calling it."""
    return (b"\x80\x04" + _str("torch.distributed.checkpoint.metadata") + _str("os.system") + b"\x93"
            + _str("touch ran-code") + b"\x85" + b"R" + b".")


def make(path: str, case: str) -> None:
    sharded.write_state(path, state(1), shard=sharded._is_bulk)
    shard = os.path.join(path, next(f for f in os.listdir(path) if f.endswith(".distcp")))
    if case == "dotted":
        with open(os.path.join(path, ".metadata"), "wb") as f:
            f.write(dotted_pickle())
    elif case == "bytes":  # the genuine layout, but model/w is now an object DCP stores as pickled bytes
        s = state(1)
        with warnings.catch_warnings():  # DCP notes that it overwrites the checkpoint: it is meant to
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({"model/w": _RunsCode(), "model/b": s["model"]["b"],
                      "optimizer/state/0/exp_avg": s["optimizer"]["state"][0]["exp_avg"]},
                     checkpoint_id=path, no_dist=True)
    elif case == "truncated":
        os.truncate(shard, os.path.getsize(shard) // 2)
    elif case == "missing":
        os.remove(shard)
    elif case == "random":
        size = os.path.getsize(shard)
        with open(shard, "wb") as f:
            f.write(torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def train_config(tiny_corpus, tmp_path_factory):
    corpus, data_dir = tiny_corpus
    root = tmp_path_factory.mktemp("resume")
    return write_config(root / "config.yaml", corpus, data_dir, str(root / "out"))


def run_route(route: str, path: str, tmp_path, train_config) -> int:
    text = tmp_path / "text.txt"
    text.write_text("To be or not to be.\n")
    if route == "inference":
        return inference.main(["--model_path", path, "--prompt", "To be", "--max_new_tokens", "2"])
    if route == "evaluate":
        return evaluate.main(["--model_path", path, "--data", str(text)])
    if route == "unshard":
        return run_cli(convert.main, ["unshard", path, str(tmp_path / "out.pth")])
    if route == "to_hf":
        return run_cli(convert.main, ["to_hf", path, str(tmp_path / "hf")])
    return run_cli(train.main, ["--config", train_config, "--resume_from", path])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("route", ROUTES)
def test_crafted_or_damaged_dcp_is_one_line_on_every_route(route, case, tmp_path, monkeypatch, capsys,
                                                          train_config):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "checkpoint_step_1.dcp")
    make(path, case)
    capsys.readouterr()
    assert run_route(route, path, tmp_path, train_config) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and path in errors[0] and "Traceback" not in err, err
    if case in ("dotted", "bytes"):
        assert "refusing its .metadata" in errors[0]
    else:
        assert "shard files are missing, cut or do not fit" in errors[0]
    assert not (tmp_path / "ran-code").exists()
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "hf").exists()
