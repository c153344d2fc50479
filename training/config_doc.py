"""The configuration reference, read from the config dataclasses themselves: each key, its default,
and the comment written beside its field. `python train.py --help` prints it grouped by section;
`python -m training.config_doc > docs/configuration.md` writes the committed reference, and a test
checks that file equals this output, so neither can drift from the code."""
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize

from model.config import LMConfig
from training.config import DataConfig, TrainConfig
from training.optimization.optimizers import OPTIMIZERS

# (section, dataclass, how a key of it is spelled as a flag), in config.yaml's order.
SECTIONS = (("model", LMConfig, "--model.{}"), ("data", DataConfig, "--data.{}"), ("train", TrainConfig, "--{}"))

RULES = (
    "`config.yaml` has three sections, `model`, `data` and `train`; every key can also be given on the command line.",
    "Settings come from the dataclass defaults, then the YAML file (`--config`), then the command line "
    "(CLI beats YAML beats defaults).",
    "Every `train` key is a flag of its own (`--batch_size 64`, also `--train.batch_size 64`); "
    "`model` and `data` keys take their section (`--model.n_layers 6`, `--data.vocab_size 8192`); "
    "`--gradient_checkpointing` is short for `--model.gradient_checkpointing`.",
    "Booleans: `--use_ema`, `--use_ema false`, `--no-use_ema`; dashes equal underscores "
    "(`--force-fresh` is `--force_fresh`).",
    "`--ddp` and `--fsdp` (or `ddp: true` / `fsdp: true` under `train`) are the booleans that set "
    "`train.parallel`; the two together are refused.",
    "An unknown key, a wrong type or an impossible combination stops before any work with one line "
    "naming the key (an unknown flag names the nearest one), exit code 2.",
    "Run length: `max_steps > 0` rules over `epochs`; `--epochs` on the command line drops a `max_steps` "
    "that came from the YAML file, and the run's first lines say which one rules.",
    "Family keys of `model` left unset (null) take the value of the family `model.arch` names "
    "(model/config.py FAMILY_DEFAULTS); one set explicitly wins.",
    "`OMP_NUM_THREADS`, when set, decides the CPU threads; otherwise the cores are shared between the "
    "ranks of a node.",
)


def field_comments(cls) -> dict:
    """{field name: its comment}: the `# ...` on the field's line, joined with comment-only lines
    indented past the field that follow it directly. A comment at the field's own indentation
    introduces a group of fields and belongs to none of them."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body
    indent = body[0].col_offset
    line_of = {}
    for node in body:
        if isinstance(node, ast.AnnAssign):
            for line in range(node.lineno, node.end_lineno + 1):
                line_of[line] = node.target.id
    comments, current, last = {}, None, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line, col = tok.start
        text = tok.string.lstrip("#").strip()
        if line in line_of:
            current = line_of[line]
            comments[current] = text
        elif current and col > indent and line == last + 1:
            comments[current] += " " + text
        else:
            current = None
        last = line
    return comments


def _default(f) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def entries(cls):
    """(name, default, meaning) for each field of cls, in declaration order."""
    comments = field_comments(cls)
    return [(f.name, _default(f), comments.get(f.name, "")) for f in dataclasses.fields(cls)]


def help_text() -> str:
    lines = ["usage: python train.py [--config config.yaml] [--<train key> value ...] "
             "[--model.<key> value] [--data.<key> value]", ""]
    lines += [rule.replace("`", "") for rule in RULES]
    for section, cls, flag in SECTIONS:
        lines += ["", f"{section}:"]
        rows = [(f"{flag.format(name)} {default}", meaning) for name, default, meaning in entries(cls)]
        width = max(len(left) for left, _ in rows) + 2
        lines += [f"  {left.ljust(width)}{meaning}".rstrip() for left, meaning in rows]
    lines += ["", "optimizers: " + "; ".join(f"{k}: {v.help}" for k, v in OPTIMIZERS.items())]
    return "\n".join(lines)


def markdown() -> str:
    out = ["# Configuration reference", "",
           "Generated from the dataclasses (`model/config.py` LMConfig, `training/config.py` DataConfig and "
           "TrainConfig) by `python -m training.config_doc > docs/configuration.md`; "
           "`python train.py --help` prints the same. Do not edit by hand: change the field's comment.", ""]
    out += [f"- {rule}" for rule in RULES]
    out += ["", "Optimizers (`train.optimizer_type`): " + "; ".join(f"`{k}`: {v.help}" for k, v in OPTIMIZERS.items())]
    for section, cls, flag in SECTIONS:
        out += ["", f"## {section}", "", "| key | default | flag | meaning |", "|---|---|---|---|"]
        for name, default, meaning in entries(cls):
            cell = meaning.replace("|", "\\|")
            out.append(f"| `{name}` | `{default}` | `{flag.format(name)}` | {cell} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
