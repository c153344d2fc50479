"""The sharded checkpoint layout in one process: what is written reads back whole; a write that fails
leaves no checkpoint and no temporary (and an older checkpoint of that name intact); a temporary left
by a killed writer is removed at the next start."""
import os

import pytest
import torch

import checkpoint as ckpt
from checkpoint import sharded
from tests.helpers.train_states import state
from utils import OutputError, remove_stale_temporaries


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_written_state_reads_back_whole_with_bulk_tensors_in_shards(tmp_path):
    path = str(tmp_path / "checkpoint_step_1.dcp")
    sharded.write_state(path, state(1), shard=sharded._is_bulk)
    assert ckpt.is_sharded(path) and os.path.exists(os.path.join(path, ".metadata"))
    meta = torch.load(os.path.join(path, ckpt.SHARD_META), weights_only=True)
    assert meta["model"]["w"] == {ckpt.MARKER: "model/w", "shape": [6, 4], "dtype": "float32"}
    assert isinstance(meta["rng"][0], torch.Tensor)  # small state stays in meta.pth
    assert_same(ckpt.load_checkpoint(path), state(1))
    assert ckpt.step_checkpoints(str(tmp_path)) == [(1, path)]


def test_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint_interrupted.dcp")
    sharded.write_state(path, state(1), shard=sharded._is_bulk)

    def fail(tensors, checkpoint_id, **kw):
        os.makedirs(checkpoint_id, exist_ok=True)
        with open(os.path.join(checkpoint_id, "__0_0.distcp"), "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded.dcp, "save", fail)
    with pytest.raises(OutputError, match="cannot write the sharded checkpoint"):
        sharded.write_state(path, state(2), shard=sharded._is_bulk)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_interrupted.dcp"]
    assert_same(ckpt.load_checkpoint(path), state(1))
    monkeypatch.undo()
    sharded.write_state(path, state(2), shard=sharded._is_bulk)  # replaces it whole
    assert_same(ckpt.load_checkpoint(path), state(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_interrupted.dcp"]
    assert ckpt.latest_checkpoint(str(tmp_path)) == path


def test_temporary_of_a_killed_writer_is_removed(tmp_path):
    stale = tmp_path / ".checkpoint_step_5.dcp.tmp-999999999"
    os.makedirs(stale)
    (stale / "__0_0.distcp").write_bytes(b"partial")
    assert ckpt.step_checkpoints(str(tmp_path)) == [] and ckpt.latest_checkpoint(str(tmp_path)) is None
    assert remove_stale_temporaries(str(tmp_path)) == 1 and not stale.exists()


def test_shard_and_unshard_refuse_the_wrong_kind_of_source(tmp_path):
    path = str(tmp_path / "a.dcp")
    sharded.write_state(path, state(1), shard=sharded._is_bulk)
    with pytest.raises(ckpt.CheckpointError, match="shard takes a .pth"):
        sharded.to_sharded(path, str(tmp_path / "b.dcp"))
    with pytest.raises(ckpt.CheckpointError, match="not a sharded checkpoint"):
        sharded.to_single_file(str(tmp_path / "nothing"), str(tmp_path / "c.pth"))


class _RunsCode:
    def __reduce__(self):  # unpickling this calls os.system: what a crafted checkpoint would do
        return (os.system, ("touch ran-code",))


def test_crafted_metadata_is_refused_without_running_code(tmp_path, monkeypatch):
    import pickle
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "checkpoint_step_1.dcp")
    sharded.write_state(path, state(1), shard=sharded._is_bulk)
    assert_same(ckpt.load_checkpoint(path)["model"], state(1)["model"])  # the genuine metadata passes
    with open(os.path.join(path, ".metadata"), "wb") as f:
        pickle.dump(_RunsCode(), f)
    with pytest.raises(ckpt.CheckpointError, match="refusing its .metadata"):
        ckpt.load_checkpoint(path)
    assert not (tmp_path / "ran-code").exists()


def test_shard_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    import torch.distributed.checkpoint.filesystem as dcp_files

    import convert
    from utils import run_cli
    src = str(tmp_path / "a.pth")
    torch.save(state(1), src)

    def full(*args, **kwargs):  # where DCP writes a tensor into its shard file; DCP wraps what it raises
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp_files, "_write_item", full)
    assert run_cli(convert.main, ["shard", src, str(tmp_path / "a.dcp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write the sharded checkpoint") and "no space left" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["a.pth"]


def test_metadata_pointing_outside_the_checkpoint_is_refused(tmp_path):
    import pickle
    path = str(tmp_path / "a.dcp")
    sharded.write_state(path, state(1), shard=sharded._is_bulk)
    metadata = sharded.check_metadata(path)
    for info in metadata.storage_data.values():
        info.relative_path = "../../etc/hostname"
    with open(os.path.join(path, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(ckpt.CheckpointError, match="points outside the checkpoint"):
        ckpt.load_checkpoint(path)
