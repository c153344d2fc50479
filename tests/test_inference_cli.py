"""inference.py as a user runs it: generation, streaming, batches, the REPL, fill-mask, and one-line
errors with exit code 2 for every bad request."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import inference
from tests.helpers.tiny_models import save_checkpoint, tiny_model, tiny_tokenizer
from tests.helpers.train_harness import ROOT

pytestmark = pytest.mark.slow  # inference.py end to end: as processes, and main() in-process on real checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = tiny_tokenizer(str(root))
    return {"clm": save_checkpoint(str(root / "clm"), tiny_model("clm"), tok, ema=True),
            "mlm": save_checkpoint(str(root / "mlm"), tiny_model("mlm"), tok), "root": root}


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"), *args], cwd=ROOT, input=stdin,
                          capture_output=True, encoding="utf-8", timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # Chinese and emoji, whatever the locale


def main(capsys, *args):
    """inference.main in this process (a subprocess per case would cost seconds of imports each)."""
    code = inference.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_prompt_seeded_and_streamed_equal(ckpts, capsys):
    args = ["--model_path", ckpts["clm"], "--prompt", "今天 👑", "--max_new_tokens", "30", "--seed", "5"]
    a, s = cli(*args), cli(*args, "--stream")
    b = main(capsys, *args)
    assert a.returncode == b.returncode == s.returncode == 0, a.stderr
    assert a.stdout == b.stdout == s.stdout and a.stdout.startswith("今天 👑") and len(a.stdout) > len("今天 👑\n")
    ema = main(capsys, *args, "--ema")
    assert ema.returncode == 0 and ema.stdout != a.stdout
    compiled = main(capsys, *args, "--compile")                   # the compiled step samples the same tokens
    assert compiled.returncode == 0 and compiled.stdout == a.stdout, compiled.stderr
    int8 = main(capsys, *args, "--int8", "--greedy")
    assert int8.returncode == 0 and int8.stdout.startswith("今天 👑") and len(int8.stdout) > len("今天 👑\n"), int8.stderr


def test_batch_file_to_jsonl(ckpts, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\n\nNow is the winter\n今天\n  \nFriends, Romans, countrymen\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    common = ["--model_path", ckpts["clm"], "--greedy", "--max_new_tokens", "10"]
    proc = main(capsys, *common, "--batch_file", str(prompts), "--output", str(out), "--batch_size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "4 prompts, 40 new tokens" in proc.stderr and str(out) in proc.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["To be", "Now is the winter", "今天", "Friends, Romans, countrymen"]
    for row in rows:  # batches of two prompts of different lengths == each prompt alone
        single = main(capsys, *common, "--prompt", row["prompt"])
        assert single.stdout == row["prompt"] + row["generated"] + "\n" and row["generated"]
    printed = main(capsys, *common, "--batch_file", str(prompts))
    assert printed.stdout.count("### ") == 4 and f"To be{rows[0]['generated']}" in printed.stdout


def test_interactive_clear_exit_and_eof(ckpts):
    base = ["--model_path", ckpts["clm"], "--interactive", "--greedy", "--max_new_tokens", "8"]
    proc = cli(*base, stdin="hello there\nclear\nhow now\nexit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2 and "(history cleared)" in proc.stdout and proc.stdout.rstrip().endswith("bye")
    eof = cli(*base, "--stream", stdin="hello there\n")
    assert eof.returncode == 0 and eof.stdout.count("model> ") == 1 and eof.stdout.rstrip().endswith("bye")
    assert "Traceback" not in eof.stderr


def test_interactive_ctrl_c_leaves_cleanly(ckpts):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "inference.py"), "--model_path", ckpts["clm"],
                             "--interactive", "--greedy"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen = b""
    while not seen.endswith(b"you> "):  # the REPL is waiting for a line
        byte = proc.stdout.read(1)
        assert byte, proc.stderr.read()
        seen += byte
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.decode().rstrip().endswith("bye") and b"Traceback" not in err, err


def test_fill_mask_prints_sorted_candidates(ckpts, capsys):
    for extra, k in (([], 5), (["--top_k", "3"], 3)):
        proc = main(capsys, "--model_path", ckpts["mlm"], "--fill_mask", "The <mask> of Denmark", *extra)
        assert proc.returncode == 0, proc.stderr
        probs = [float(line.split()[0]) for line in proc.stdout.splitlines() if line.startswith("  ")]
        assert len(probs) == k and probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)


def test_bad_requests_exit_2_with_one_line(ckpts, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04garbage")
    state = torch.load(ckpts["clm"], weights_only=True)   # weights of another layout (renamed tensor)
    state["model"]["layers.0.attention.wq.weight"] = state["model"].pop("layers.0.attention.wqkv.weight")
    foreign = tmp_path / "run" / "best.pth"
    foreign.parent.mkdir()
    torch.save(state, foreign)
    shutil.copy(os.path.join(os.path.dirname(ckpts["clm"]), "tokenizer.json"), foreign.parent / "tokenizer.json")
    no_tokenizer = tmp_path / "bare" / "best.pth"
    no_tokenizer.parent.mkdir()
    shutil.copy(ckpts["clm"], no_tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\n", encoding="utf-8")
    cases = [
        (["--model_path", ckpts["clm"], "--fill_mask", "The <mask>"], "causal LM"),
        (["--model_path", ckpts["mlm"], "--prompt", "To be"], "masked LM"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "no mask here"], "no <mask> token"),
        (["--model_path", str(tmp_path / "missing.pth"), "--prompt", "x"], "checkpoint not found"),
        (["--model_path", str(corrupt), "--prompt", "x"], "not a readable checkpoint"),
        (["--model_path", str(foreign), "--prompt", "x"], "weights do not fit this model"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "The <mask>", "--ema"], "no EMA weights"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--top_p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--top_k", "-3"], "top_k must be >= 0"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--max_new_tokens", "0"], "max_new_tokens must be at least 1"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--repetition_penalty", "0"], "repetition_penalty must be > 0"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--output", "r.jsonl"], "--output goes with --batch_file"),
        (["--model_path", ckpts["clm"], "--batch_file", str(empty)], "has no prompts"),
        (["--model_path", ckpts["clm"], "--batch_file", str(tmp_path / "nope.txt")], "cannot read"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--device", "banana"], "not a device name"),
        (["--model_path", ckpts["clm"], "--batch_file", str(corrupt)], "cannot read"),   # not UTF-8
        (["--model_path", ckpts["clm"], "--batch_file", str(prompts), "--output", str(tmp_path)], "cannot write"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model_path", ckpts["clm"], "--prompt", "x", "--device", "cuda"], "sees no CUDA GPU"))
    for args, fragment in cases:
        proc = main(capsys, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and fragment in proc.stderr and proc.stdout == "", (args, proc.stderr)
    # As a process: exit status 2 and the one line, nothing else.
    for args, fragment in (cases[1], cases[4]):
        proc = cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    # A checkpoint carries its tokenizer: copied alone, it still generates.
    assert main(capsys, "--model_path", str(no_tokenizer), "--prompt", "To be", "--max_new_tokens", "3").returncode == 0


def test_flags_the_mode_would_ignore_are_refused(ckpts, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("To be\n", encoding="utf-8")
    cases = [
        (["--model_path", ckpts["clm"], "--batch_file", str(prompts), "--stream"], "--stream goes with --prompt"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--batch_size", "4"], "--batch_size goes with --batch_file"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "The <mask>", "--temperature", "0.5"],
         "--temperature has no effect with --fill_mask"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "The <mask>", "--greedy", "--seed", "3"],
         "--greedy, --seed has no effect with --fill_mask"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "The <mask>", "--stream"], "--stream goes with --prompt"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--compile", "--int8"], "--compile and --int8 do not combine"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "The <mask>", "--compile"], "--compile speeds up generation"),
        (["--model_path", os.path.dirname(ckpts["clm"]), "--prompt", "x"], "is a directory, not a checkpoint file; "
                                                                           "it holds best.pth"),
    ]
    for args, fragment in cases:
        proc = main(capsys, *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, (args, proc.stderr)


def test_ema_checkpoint_says_which_weights_it_uses(ckpts, capsys):
    proc = main(capsys, "--model_path", ckpts["clm"], "--prompt", "To be", "--max_new_tokens", "2", "--greedy")
    assert proc.returncode == 0 and "using the raw trained weights (the ones the run evaluated)" in proc.stderr
    proc = main(capsys, "--model_path", ckpts["clm"], "--prompt", "To be", "--max_new_tokens", "2", "--ema")
    assert proc.returncode == 0 and "using the EMA weights" in proc.stderr


def test_inference_does_not_import_training_code():
    code = "import sys, inference, checkpoint, model.int8; print(sorted(m for m in sys.modules if m.split('.')[0] == 'training'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_full_disk_for_output_is_one_line(ckpts, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\nNow is\n")
    proc = main(capsys, "--model_path", ckpts["clm"], "--batch_file", str(prompts), "--output", "/dev/full",
                "--max_new_tokens", "2")  # /dev/full: every write fails with ENOSPC
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no space left" in errors[0] and "/dev/full" in errors[0]


def test_ctrl_c_while_starting_up_exits_quietly(ckpts):
    """SIGINT while torch is still being imported (before main's handler exists): exit 130, no traceback."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc to see when torch is being loaded")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "inference.py"), "--model_path", ckpts["clm"],
                             "--prompt", "To be"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    importing = False
    while proc.poll() is None and not importing:
        try:
            with open(f"/proc/{proc.pid}/maps") as f:
                importing = "libtorch" in f.read()  # torch's library is mapped: its import is under way
        except OSError:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert importing and proc.returncode == 130 and b"Traceback" not in err, err.decode()[-2000:]
