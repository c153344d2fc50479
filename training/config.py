"""Run configuration: dataclasses filled from defaults, then YAML, then command-line flags.

Every key is checked before any work starts; a mistake stops the run with one line that names the
key and what would be valid."""
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Optional

import yaml

from data.sources.settings import DEFAULT_READ
from model.config import LMConfig
from training.optimization.optimizers import check_settings as optimizer_problem
from training.parallelism.strategies import STRATEGIES
from training.optimization.schedule import DECAY_SHAPES, SCHEDULES
from utils import DTYPES, ConfigError

DTYPE_CHOICES = ("auto",) + DTYPES


@dataclass
class DataConfig:
    inputs: list = field(default_factory=lambda: ["dataset/sample.jsonl"])  # JSONL, .txt or .md files or globs
    out_dir: str = "dataset/sample"       # tokenizer.json, train.bin, val.bin and stats live here
    # How documents are read (these four and prefix_field): defaults from data/sources/settings.py's ReadSettings
    text_field: str = DEFAULT_READ.text_field  # JSONL inputs; .txt / .md inputs are plain text
    text_unit: str = DEFAULT_READ.text_unit    # plain text: one document per paragraph, per line or per file
    min_chars: int = DEFAULT_READ.min_chars    # shorter documents are dropped (counted as too_short)
    max_chars: int = DEFAULT_READ.max_chars    # longer documents are dropped (counted as too_long)
    seq_len: Optional[int] = None         # training window length; None: the processor's max_length if it fits, else
                                          # model.max_seq_len (may be shorter than the context)
    vocab_size: int = 4096                # tokenizer size when one is trained
    tokenizer_path: Optional[str] = None  # a tokenizer.json or a Hugging Face directory to use instead of training one
    train_bin: Optional[str] = None       # an already processed .bin (python -m data.processor), a shard manifest.json
                                          # or a glob of shards; when set, inputs are not read and tokenizer_path is required
    val_bin: Optional[str] = None         # its validation .bin (same forms); train_bin without it: a run without validation
    val_ratio: float = 0.05               # share of documents drawn into the validation split (0: none)
    mask_rate: float = 0.15               # masked LM: share of tokens chosen for the loss (0.3-0.4 trains small models faster)
    mask_token_frac: float = 0.8          # masked LM: share of chosen tokens replaced by the mask token
    random_token_frac: float = 0.1        # masked LM: share of chosen tokens replaced by a random token (the rest kept)
    eval_mask_rate: float = 0.15          # fixed, so evaluations of runs with different rates compare
    pairs: bool = False                   # masked LM: [CLS] A [SEP] B [SEP] samples and next-sentence prediction
    prefix_field: Optional[str] = DEFAULT_READ.prefix_field  # JSONL: a record's prompt, put before its text; a
                                          # prefix LM (plm with model.document_mask) takes it as the document's prefix
    whole_word_mask: bool = False         # masked LM: mask all pieces of a chosen word (evaluation stays per piece)


@dataclass
class TrainConfig:
    out_dir: str = "out"                  # runs are written to out_dir/run_name
    run_name: str = "run"                 # the run's directory under out_dir
    seed: int = 1337                      # initialisation, sample order and masks are drawn from it
    device: str = "auto"                  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N | mps
    epochs: int = 1                       # passes over the training windows when max_steps is 0
    max_steps: int = 0                    # > 0 rules over epochs (a CLI --epochs drops a YAML max_steps)
    batch_size: int = 32                  # per process, per micro-step
    accumulation_steps: int = 1           # micro-steps per optimizer step (gradients summed, no all-reduce between)
    learning_rate: float = 3e-4           # peak rate, reached at the end of warmup
    min_lr: float = 3e-5                  # the rate the schedule decays to
    warmup: float = 0.05                  # steps (>= 1) or a fraction of the run (< 1)
    lr_scheduler: str = "cosine"          # a name in training.optimization.schedule.SCHEDULES (decay after warmup)
    lr_power: float = 1.0                 # polynomial decay exponent
    decay_fraction: float = 0.2           # wsd: the decay takes the last this share of the run, in (0, 1]
    decay_shape: str = "1-sqrt"           # wsd: linear | 1-sqrt (Hagele et al. 2024: 1-sqrt does better)
    optimizer_type: str = "adamw"         # a name in training.optimization.optimizers.OPTIMIZERS
    muon_lr: float = 0.02                 # muon: the blocks' weight matrices (update scaled by sqrt(max(1, rows/cols)))
    muon_momentum: float = 0.95           # muon: Nesterov momentum of those matrices
    embedding_lr: Optional[float] = None  # muon: embeddings' AdamW rate; None: learning_rate
    head_lr: Optional[float] = None       # muon: untied output layer's AdamW rate; None: learning_rate
    weight_decay: float = 0.1             # AdamW decoupled decay; not on norms, biases, embeddings (adam: must be 0)
    decay_embeddings: bool = False        # apply weight_decay to the embeddings too
    beta1: float = 0.9                    # Adam(W) first-moment decay
    beta2: float = 0.95                   # Adam(W) second-moment decay
    adam_eps: float = 1e-8                # Adam(W) epsilon
    grad_clip: float = 1.0                # 0 disables clipping (the norm is still logged)
    dtype: str = "auto"                   # autocast: auto (bf16 or fp16 on GPUs, fp32 on CPU) | float32 | bfloat16 | float16
    use_ema: bool = False                 # keep an exponential moving average of the weights; it is evaluated and saved
    ema_decay: float = 0.999              # EMA decay, warmed up as min(decay, (1+t)/(10+t))
    eval_interval: int = 200              # steps between evaluations (and best.pth updates)
    eval_samples: int = 640               # validation windows per evaluation, all ranks together; 0 = all
    eval_batches: Optional[int] = None    # older spelling, in batches: eval_samples = eval_batches x batch_size
    early_stopping: bool = False          # stop after patience evaluations without improvement
    patience: int = 5                     # evaluations without improvement before early stopping
    min_delta: float = 0.0                # an improvement must beat the best validation loss by more than this
    log_interval: int = 10                # steps between log lines and metrics.jsonl records
    save_interval: int = 500              # steps between checkpoints (one is also written at the end)
    keep_last: int = 3                    # step checkpoints kept; older ones are removed
    max_nan_steps: int = 5                # this many non-finite losses in a row stop the run
    compile: bool = False                 # torch.compile each block
    parallel: str = "single"              # under torchrun: ddp (every rank holds the whole model) | fsdp (model, gradients and optimizer sharded: FSDP2) | single; --ddp / --fsdp set it
    resume: bool = False                  # continue the run from its newest checkpoint
    resume_from: Optional[str] = None     # with resume: this checkpoint instead of the newest
    init_from: Optional[str] = None       # a new run from these weights: a checkpoint or a Hugging Face directory
    trainable: str = "all"                # all | embeddings | new_embeddings | name globs (training/optimization/freeze.py)
    force_fresh: bool = False             # start over in a run directory that holds checkpoints, removing them
    tensorboard: bool = False             # also log to TensorBoard in the run directory
    use_wandb: bool = False               # also log to Weights & Biases (offline unless WANDB_MODE says otherwise)
    wandb_project: Optional[str] = None   # wandb project; None: pretrain
    wandb_run_name: Optional[str] = None  # wandb run name; None: wandb's own
    peak_flops: float = 0.0               # for MFU on hardware not in the built-in table


@dataclass
class RunConfig:
    model: dict = field(default_factory=dict)   # LMConfig fields; vocab_size may be left to the tokenizer
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    notes: list = field(default_factory=list)   # how conflicting settings were resolved, for the log
    cli_keys: set = field(default_factory=set)  # (section, key) given on the command line
    parallel_flags: set = field(default_factory=set)  # --ddp / --fsdp (or YAML ddp/fsdp) left on: two are refused

    def to_dict(self) -> dict:
        return {"model": dict(self.model), "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train)}

    def model_config(self, vocab_size: int) -> LMConfig:
        d = dict(self.model)
        d.setdefault("vocab_size", vocab_size)
        cfg = LMConfig.from_dict(d)
        if cfg.vocab_size < vocab_size:
            raise ConfigError(f"model.vocab_size ({cfg.vocab_size}) is smaller than the tokenizer's ({vocab_size})")
        return cfg


SECTIONS = {"data": DataConfig, "train": TrainConfig}
# Flags users type without a section prefix: every train field, e.g. --batch_size, and the model
# switch users expect beside them.
SHORT_FLAGS = {**{f.name: "train" for f in fields(TrainConfig)}, "gradient_checkpointing": "model"}
# The seed's spellings of train.parallel: booleans (--ddp, --no-fsdp, YAML `ddp: true`) that set it.
PARALLEL_FLAGS = ("ddp", "fsdp")
SHORT_FLAGS.update({name: "train" for name in PARALLEL_FLAGS})
# Model keys a run sets itself: a value given for them would be silently replaced.
DERIVED_MODEL_KEYS = {"pad_token_id": "the pad id comes from the tokenizer"}
MOVED_KEYS = {("train", "gradient_checkpointing"): "model.gradient_checkpointing (or --gradient_checkpointing)",
              ("data", "max_length"): "data.max_chars (it is a cap in characters that drops longer documents); the "
                                      "length in tokens of the training samples is data.seq_len"}


def _nearest_key(section, key, valid) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean {section}.{close[0]}?" if close else f"valid keys: {', '.join(valid)}"


def _nearest_flag(name) -> str:
    """The flag a mistyped undotted name most likely meant: a short flag or a dotted model or data
    key (--n_layer -> --model.n_layers)."""
    flags = {f.name: f"{section}.{f.name}" for section, cls in (("data", DataConfig), ("model", LMConfig))
             for f in fields(cls)}
    flags.update({key: key for key in [*SHORT_FLAGS, "config"]})  # the short spelling wins where both exist
    close = difflib.get_close_matches(name, list(flags), n=1)
    return f"did you mean --{flags[close[0]]}?" if close else "see python train.py --help"


def _field_type(cls, name):
    hints = typing.get_type_hints(cls)
    t = hints[name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if typing.get_origin(t) is typing.Union else t


def _coerce(value, typ, key):
    """Turn a YAML or CLI value into the field's type, or say which key is wrong."""
    if value is None:
        return None
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is list or typing.get_origin(typ) is list:
            return list(value) if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _model_value(key, value):
    if key in DERIVED_MODEL_KEYS:
        raise ConfigError(f"model.{key} cannot be set: {DERIVED_MODEL_KEYS[key]}")
    names = {f.name: f for f in fields(LMConfig)}
    if key not in names:
        raise ConfigError(f"unknown key model.{key}; {_nearest_key('model', key, sorted(names))}")
    return _coerce(value, _field_type(LMConfig, key), f"model.{key}")


def _apply(cfg: RunConfig, section: str, key: str, value) -> None:
    if section == "model":
        cfg.model[key] = _model_value(key, value)
        return
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}; valid sections: model, data, train")
    if (section, key) in MOVED_KEYS:
        raise ConfigError(f"{section}.{key} is now {MOVED_KEYS[section, key]}")
    if section == "train" and key in PARALLEL_FLAGS:
        _parallel_flag(cfg, key, _coerce(value, bool, f"train.{key}"))
        return
    obj = getattr(cfg, section)
    valid = [f.name for f in fields(obj)]
    if key not in valid:
        raise ConfigError(f"unknown key {section}.{key}; {_nearest_key(section, key, valid)}")
    setattr(obj, key, _coerce(value, _field_type(type(obj), key), f"{section}.{key}"))


def _parallel_flag(cfg: RunConfig, name: str, on: bool) -> None:
    """--ddp / --fsdp (true or false) as train.parallel: on selects it, off falls back to single
    unless another strategy is selected."""
    if on:
        cfg.train.parallel = name
        cfg.parallel_flags.add(name)
    else:
        cfg.parallel_flags.discard(name)
        if cfg.train.parallel == name:
            cfg.train.parallel = "single"


def load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with model/data/train sections")
    return raw


def parse_cli(argv) -> tuple:
    """Split argv into (config path, [(section, key, value)]). Accepts --key value, --key=value,
    bare boolean flags (--use_ema), --no-<flag>, dotted keys (--model.n_layers 6) and dashes in names."""
    config_path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(usage())
            raise SystemExit(0)
        if arg.replace("-", "_").startswith("__local_rank"):
            # The legacy launcher (python -m torch.distributed.launch) passes --local-rank=N; the
            # same rank is in the LOCAL_RANK environment variable, which is what we read.
            i += 1 if "=" in arg else 2
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; flags look like --batch_size 64 or --model.dim 256")
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        negate = name.startswith("no_") and SHORT_FLAGS.get(name[3:]) is not None
        if negate:
            name = name[3:]
        if "." in name:
            section, key = name.split(".", 1)
        elif name == "config":
            section, key = None, "config"
        elif name in SHORT_FLAGS:
            section, key = SHORT_FLAGS[name], name
        else:
            raise ConfigError(f"unknown flag --{name}; {_nearest_flag(name)}")
        owner = LMConfig if section == "model" else SECTIONS.get(section)
        is_bool = (section == "train" and key in PARALLEL_FLAGS) or (
            owner is not None and key in {f.name for f in fields(owner)} and _field_type(owner, key) is bool)
        if not eq:
            if negate or (is_bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--"))):
                value = "false" if negate else "true"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"flag --{name} needs a value")
        if key == "config":
            config_path = value
        else:
            overrides.append((section, key, value))
        i += 1
    return config_path, overrides


def build_config(argv, default_config: Optional[str] = None) -> RunConfig:
    """Defaults, then the YAML file, then flags (CLI beats YAML beats defaults), then validation."""
    config_path, overrides = parse_cli(list(argv))
    config_path = config_path or default_config
    cfg = RunConfig()
    from_yaml = set()
    if config_path:
        for section, values in load_yaml(config_path).items():
            if not isinstance(values, dict):
                raise ConfigError(f"{config_path}: section {section!r} must be a mapping")
            for key, value in values.items():
                _apply(cfg, section, key, value)
                from_yaml.add((section, key))
    for section, key, value in overrides:
        _apply(cfg, section, key, value)
    cfg.cli_keys = {(s, k) for s, k, _ in overrides}
    _resolve_run_length(cfg, from_yaml, cfg.cli_keys, config_path)
    _resolve_eval_size(cfg, from_yaml, cfg.cli_keys)
    validate(cfg)
    return cfg


def _resolve_run_length(cfg, from_yaml: set, from_cli: set, config_path) -> None:
    """epochs and max_steps both set the run's length. A command-line value beats the YAML's, so
    --epochs on the command line drops a max_steps that came from the file; when both remain,
    max_steps rules and the notes say so."""
    t, epochs, steps = cfg.train, ("train", "epochs"), ("train", "max_steps")
    if epochs in from_cli and steps not in from_cli and steps in from_yaml and t.max_steps > 0:
        cfg.notes.append(f"--epochs {t.epochs} given: ignoring max_steps {t.max_steps} from {config_path}")
        t.max_steps = 0
    elif t.max_steps > 0 and (epochs in from_cli or epochs in from_yaml):
        cfg.notes.append(f"max_steps {t.max_steps} rules: epochs {t.epochs} is ignored (pass --max_steps 0 to "
                         "train by epochs)")


def _resolve_eval_size(cfg, from_yaml: set, from_cli: set) -> None:
    """Validation is counted in samples, so a resume with another batch size scores the same
    windows. eval_batches (the older key) converts with this run's batch size when it is given on
    a higher level than eval_samples (the command line over the YAML over the default); otherwise
    eval_samples rules. A resumed run that keeps the same eval_batches keeps its first run's
    samples (eval_samples_on_resume)."""
    t, samples, batches = cfg.train, ("train", "eval_samples"), ("train", "eval_batches")
    if t.eval_batches is None:
        return

    def level(key):
        return 2 if key in from_cli else 1 if key in from_yaml else 0
    if level(samples) >= level(batches):
        if t.eval_samples != t.eval_batches * t.batch_size:
            cfg.notes.append(f"eval_samples {t.eval_samples} rules over eval_batches {t.eval_batches}")
        t.eval_batches = None
        return
    if not isinstance(t.eval_batches, int) or isinstance(t.eval_batches, bool) or t.eval_batches < 0:
        raise ConfigError(f"train.eval_batches must be an integer >= 0 (0 = all), got {t.eval_batches!r}")
    t.eval_samples = t.eval_batches * t.batch_size


def eval_samples_on_resume(t, saved_train: dict):
    """The eval_samples a resumed run keeps: its first run's, when this run sets eval_batches (a
    count that moves with the batch size) to the same number the first run did. None: keep t's."""
    saved = saved_train.get("eval_samples")
    if t.eval_batches is None or saved_train.get("eval_batches") != t.eval_batches or saved is None:
        return None
    return None if saved == t.eval_samples else int(saved)


def validate(cfg: RunConfig) -> None:
    t, d = cfg.train, cfg.data
    for section, obj in (("train", t), ("data", d)):  # nan and inf pass every comparison below
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {value}")
    if d.seq_len is not None and (not isinstance(d.seq_len, int) or isinstance(d.seq_len, bool) or d.seq_len <= 1):
        raise ConfigError(f"data.seq_len must be an integer > 1 (or null: model.max_seq_len), got {d.seq_len!r}")
    context = cfg.model.get("max_seq_len", LMConfig.max_seq_len)
    if d.seq_len and not t.init_from and isinstance(context, int) and d.seq_len > context:  # init_from: checked on load
        raise ConfigError(f"data.seq_len {d.seq_len} is longer than the model's context (model.max_seq_len {context})")
    if t.lr_scheduler not in SCHEDULES:
        raise ConfigError(f"train.lr_scheduler must be one of {', '.join(SCHEDULES)}, got {t.lr_scheduler!r}")
    if not 0 < t.decay_fraction <= 1:
        raise ConfigError(f"train.decay_fraction must be in (0, 1] (the share of the run that decays), got {t.decay_fraction}")
    if t.decay_shape not in DECAY_SHAPES:
        raise ConfigError(f"train.decay_shape must be one of {', '.join(DECAY_SHAPES)}, got {t.decay_shape!r}")
    problem = optimizer_problem(t)
    if problem:
        raise ConfigError(problem)
    if t.grad_clip < 0:
        raise ConfigError(f"train.grad_clip must be >= 0 (0 disables clipping), got {t.grad_clip}")
    if t.dtype not in DTYPE_CHOICES:
        raise ConfigError(f"train.dtype must be one of {', '.join(DTYPE_CHOICES)}, got {t.dtype!r}")
    for key in ("batch_size", "accumulation_steps", "eval_interval", "log_interval", "save_interval",
                "keep_last", "patience", "max_nan_steps"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    if t.epochs < 1 and t.max_steps < 1:
        raise ConfigError("train.epochs or train.max_steps must be at least 1")
    if t.learning_rate <= 0 or t.min_lr < 0 or t.min_lr > t.learning_rate:
        raise ConfigError(f"need 0 <= train.min_lr ({t.min_lr}) <= train.learning_rate ({t.learning_rate}) and learning_rate > 0")
    if t.warmup < 0:
        raise ConfigError(f"train.warmup must be >= 0, got {t.warmup}")
    if t.max_steps and t.warmup >= 1 and t.warmup >= t.max_steps:
        raise ConfigError(f"train.warmup ({t.warmup:g} steps) must be shorter than the run (max_steps {t.max_steps})")
    if not isinstance(t.eval_samples, int) or isinstance(t.eval_samples, bool) or t.eval_samples < 0:
        raise ConfigError(f"train.eval_samples must be an integer >= 0 (0 = the whole validation set), "
                          f"got {t.eval_samples!r}")
    if not 0 < t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in (0, 1), got {t.ema_decay}")
    if len(cfg.parallel_flags) > 1:
        raise ConfigError("--ddp and --fsdp are two ways to spread one run over processes; pass one")
    if t.parallel not in STRATEGIES:
        raise ConfigError(f"train.parallel must be one of {', '.join(STRATEGIES)}, got {t.parallel!r}")
    if t.parallel == "fsdp" and t.trainable == "new_embeddings":
        raise ConfigError("train.trainable new_embeddings freezes rows inside a tensor, which --fsdp shards; "
                          "train it with --ddp or in one process")
    if t.resume and t.force_fresh:
        raise ConfigError("--resume and --force-fresh contradict each other; pass one")
    if not 0 <= d.val_ratio < 1:
        raise ConfigError(f"data.val_ratio must be in [0, 1), got {d.val_ratio}")
    if t.early_stopping and (d.val_ratio == 0 if not d.train_bin else not d.val_bin):
        raise ConfigError("train.early_stopping needs validation data to judge by: set data.val_ratio > 0 (e.g. 0.05)"
                          + (" or data.val_bin" if d.train_bin else ""))
    if not 0 < d.mask_rate <= 1 or not 0 < d.eval_mask_rate <= 1:
        raise ConfigError("data.mask_rate and data.eval_mask_rate must be in (0, 1]")
    if d.mask_token_frac < 0 or d.random_token_frac < 0 or d.mask_token_frac + d.random_token_frac > 1:
        raise ConfigError("data.mask_token_frac + data.random_token_frac must be within [0, 1]")
    if d.val_bin and not d.train_bin:
        raise ConfigError("data.val_bin goes with data.train_bin (a run without data.train_bin makes its own split)")
    if d.train_bin and not d.tokenizer_path:
        raise ConfigError("data.train_bin needs data.tokenizer_path: the tokenizer the .bin files were made with")
    if not d.inputs and not d.train_bin:
        raise ConfigError("data.inputs must list at least one JSONL file or glob")
    # The model section is checked by LMConfig itself (vocab_size may still come from the tokenizer).
    LMConfig.from_dict({"vocab_size": 1 << 20, **cfg.model})


def usage() -> str:
    from training.config_doc import help_text  # reads this module's dataclasses
    return help_text()


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
