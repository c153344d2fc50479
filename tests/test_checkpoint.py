"""The checkpoint package: format check, which weights inference loads, one-line errors, full disks."""
import errno
import os

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError, CheckpointMeta, load_for_inference
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer
from utils import OutputError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def write(path, model, tok, ema=None, evaluated="model", kind="weights"):
    parts = {"model": model.state_dict()}
    if ema is not None:
        parts["ema"] = ema
    checkpoint.write(str(path), parts, CheckpointMeta(kind=kind, step=3, model_config=model.config.to_dict(), config={},
                                                      tokenizer=tok, evaluated=evaluated))
    return str(path)


def test_inference_loads_the_weights_the_run_evaluated(tmp_path, tok):
    model = tiny_model("clm", seed=1)
    ema = {k: v + 0.5 for k, v in model.state_dict().items()}
    path = write(tmp_path / "best.pth", model, tok, ema=ema, evaluated="ema")
    said = []
    loaded, config, tokenizer = load_for_inference(path, say=said.append)
    assert torch.equal(loaded.norm.weight, ema["norm.weight"])           # EMA by default: it was evaluated
    assert "EMA" in said[0] and "the ones the run evaluated" in said[0]
    raw, _, _ = load_for_inference(path, ema=False)
    assert torch.equal(raw.norm.weight, model.norm.weight)
    assert tokenizer.fingerprint() == tok.fingerprint() and config == model.config
    plain = write(tmp_path / "plain.pth", model, tok)
    assert torch.equal(load_for_inference(plain)[0].norm.weight, model.norm.weight)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_for_inference(plain, ema=True)


def test_another_format_and_a_directory_are_one_line_errors(tmp_path, tok):
    path = write(tmp_path / "best.pth", tiny_model("clm"), tok)
    state = torch.load(path, weights_only=True)
    state["format"] = 1
    torch.save(state, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="checkpoint format 1; this version reads format 2") as e:
        load_for_inference(str(tmp_path / "old.pth"))
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file; it holds best.pth, old.pth"):
        load_for_inference(str(tmp_path))


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos")])
def test_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path, tok, monkeypatch, failure):
    model = tiny_model("clm")
    path = write(tmp_path / "checkpoint_step_2.pth", model, tok, kind="train")
    before = open(path, "rb").read()

    def full(*args, **kwargs):
        raise failure
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError) as e:
        write(path, model, tok, kind="train")
    message = str(e.value)
    assert "no space left to write" in message and "MB free" in message and "MB needed" in message
    assert "\n" not in message
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["checkpoint_step_2.pth"]  # no temporary left behind


def test_part_names_cannot_shadow_metadata(tmp_path, tok):
    model = tiny_model("clm")
    with pytest.raises(ValueError, match="clash"):
        checkpoint.write(str(tmp_path / "x.pth"), {"model": model.state_dict(), "step": 1},
                         CheckpointMeta(kind="train", step=1, model_config=model.config.to_dict(), config={},
                                        tokenizer=tok, evaluated="model"))


TOKENIZER_DAMAGE = {
    "corrupt": lambda s: s.update(tokenizer="{not a tokenizer"),
    "no_roles": lambda s: s.pop("tokenizer_roles"),
    "roles_lack_eos": lambda s: s.update(tokenizer_roles={"roles": {"pad": "<pad>"}, "framing": "eos"}),
    "role_names_no_token": lambda s: s["tokenizer_roles"]["roles"].update(eos="<no-such-token>"),
}


@pytest.mark.parametrize("damage", sorted(TOKENIZER_DAMAGE))
@pytest.mark.parametrize("route", ["inference", "evaluate", "to_hf"])
def test_damaged_tokenizer_entry_is_one_line(tmp_path, tok, capsys, route, damage):
    import convert
    import evaluate
    import inference
    from utils import run_cli
    path = write(tmp_path / "best.pth", tiny_model("clm"), tok)
    state = torch.load(path, weights_only=True)
    TOKENIZER_DAMAGE[damage](state)
    torch.save(state, path)
    (tmp_path / "text.txt").write_text("To be or not to be.\n")
    rc = {"inference": lambda: inference.main(["--model_path", path, "--prompt", "To be", "--max_new_tokens", "2"]),
          "evaluate": lambda: evaluate.main(["--model_path", path, "--data", str(tmp_path / "text.txt")]),
          "to_hf": lambda: run_cli(convert.main, ["to_hf", path, str(tmp_path / "hf")])}[route]()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {path}: its tokenizer"), err
    assert not (tmp_path / "hf").exists()
