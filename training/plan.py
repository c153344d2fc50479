"""The run plan: what a run's configuration decides, worked out and checked once, before the Trainer.

build_plan opens the data (building what is missing), resolves the tokenizer and the model's
settings (--init_from's included), checks the combinations, and counts windows and steps. The
configuration it was given is left as it is: the settings as resolved live in the plan's `config`,
which is what a run records (config.yaml, its checkpoints, the metrics log)."""
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from tqdm import tqdm

from data.samples.prefix_split import prefix_lengths
from data.samples.token_shards import open_bin
from data.tokenizer import load_tokenizer
from training.init_from import InitSource
from training.objectives import Objective, objective_for
from training.run_data import prepare_run_data
from training.optimization.schedule import resolve_warmup
from utils import ConfigError


@dataclass(frozen=True)
class RunPlan:
    config: Any            # the RunConfig as resolved: model section and data.tokenizer_path as the run uses them
    run_dir: str
    init: Optional[InitSource]  # --init_from's source, or None
    tokenizer: Any
    fingerprint: str       # the tokenizer's
    model_config: Any      # LMConfig
    objective: Objective
    seq_len: int
    train_windows: Any
    val_windows: Any       # None: no validation data, no evaluations
    train_identity: list   # what the sample order depends on in the training tokens (DataIdentity)
    bytes_per_token: float  # of the validation split (the training one without it), for bits per byte
    global_batch: int      # samples per optimizer step, over every rank
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def say_for(info):
    """Where a run's lines go: above the progress bar, on rank 0 only."""
    return tqdm.write if info.is_main else (lambda *_: None)


def build_plan(cfg, info, say=None) -> RunPlan:
    say = say or say_for(info)
    t = cfg.train
    run_dir = os.path.join(t.out_dir, t.run_name)
    for note in cfg.notes:
        say(f"note: {note}")
    init = InitSource(t.init_from, say) if t.init_from else None
    data = cfg.data if init is None else dataclasses.replace(
        cfg.data, tokenizer_path=init_tokenizer_path(init, cfg.data.tokenizer_path, run_dir, info, say))
    paths = prepare_run_data(dataclasses.replace(cfg, data=data), info)
    tokenizer = load_tokenizer(paths["tokenizer"])
    fingerprint = tokenizer.fingerprint()
    train_bin = open_bin(paths["train_bin"])  # a .bin, or a shard manifest or glob read as one
    val_bin = open_bin(paths["val_bin"], "val") if paths.get("val_bin") else None
    for b in (train_bin, val_bin):
        if b is not None:
            b.check_tokenizer(fingerprint, tokenizer.vocab_size)
    config = dataclasses.replace(cfg, model=model_settings(cfg, init, tokenizer, say), data=data)
    model_config = config.model_config(tokenizer.vocab_size)
    objective = objective_for(model_config)
    seq_len = window_length(data, model_config, train_bin.meta.get("sample_length"), say)
    objective.check(model_config, data)
    train_prompts = val_prompts = None
    if data.prefix_field:  # each document's own prompt is its prefix
        train_prompts = prefix_lengths(train_bin.path, data.prefix_field)
        val_prompts = val_bin and prefix_lengths(val_bin.path, data.prefix_field)
    train_windows = objective.run_windows(train_bin, seq_len, model_config, data, tokenizer, True, train_prompts)
    # No validation data at all (data.val_ratio 0, or train_bin alone) is a run without evaluations.
    no_validation = val_bin is None or (data.val_ratio == 0 and not data.val_bin and len(val_bin) == 0)
    val_windows = None if no_validation else objective.run_windows(val_bin, seq_len, model_config, data, tokenizer,
                                                                   False, val_prompts)
    for split, windows, b in (("train", train_windows, train_bin), ("validation", val_windows, val_bin)):
        if windows is not None and len(windows) == 0:
            raise ConfigError(f"the {split} split ({b.path}) holds {len(b)} tokens, fewer than one window of "
                              f"{seq_len} (+1) tokens: use more text, a larger data.val_ratio "
                              "for validation, or shorter windows (data.seq_len)")
    if no_validation:
        say("note: no validation data (data.val_ratio 0 or no data.val_bin): no evaluations, no best.pth and "
            "no early stopping; checkpoints are written as usual")
    meta = (val_bin or train_bin).meta
    global_batch = t.batch_size * t.accumulation_steps * info.world_size
    steps_per_epoch = max(1, len(train_windows) // global_batch)
    total_steps = t.max_steps if t.max_steps > 0 else t.epochs * steps_per_epoch
    try:
        warmup_steps = resolve_warmup(t.warmup, total_steps)
    except ValueError as e:
        raise ConfigError(f"train.warmup: {e}")
    return RunPlan(config=config, run_dir=run_dir, init=init, tokenizer=tokenizer, fingerprint=fingerprint,
                   model_config=model_config, objective=objective, seq_len=seq_len, train_windows=train_windows,
                   val_windows=val_windows, train_identity=train_bin.identity(),
                   bytes_per_token=meta["n_text_bytes"] / max(1, meta["n_tokens"]), global_batch=global_batch,
                   steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=warmup_steps)


def model_settings(cfg, init, tokenizer, say) -> dict:
    """The model section as the run trains it: the source's with --init_from, the vocabulary
    rounded up from the tokenizer's unless given, its padding id, and the next-sentence head for
    data.pairs (sentence pairs train BERT's second head beside the masked LM)."""
    if init is not None:
        model = init.model_settings(cfg.model, {k for s, k in cfg.cli_keys if s == "model"}, say)
    else:
        model = dict(cfg.model)
    model.setdefault("vocab_size", 64 * math.ceil(tokenizer.vocab_size / 64))
    model["pad_token_id"] = tokenizer.pad_id
    if cfg.data.pairs:
        model["next_sentence"] = True
    return model


def window_length(data, model_config, recorded, say) -> int:
    """data.seq_len, else the processor's sample length (recorded) when the context holds it,
    else the model's context."""
    fits = recorded is not None and recorded <= model_config.max_seq_len
    if recorded and not fits and not data.seq_len:
        say(f"note: the data was processed for samples of {recorded} tokens (max_length), longer than the "
            f"model's context ({model_config.max_seq_len}): windows are the context's length")
    seq_len = data.seq_len or (recorded if fits else model_config.max_seq_len)
    if seq_len > model_config.max_seq_len:
        raise ConfigError(f"data.seq_len {seq_len} is longer than the model's context (model.max_seq_len "
                          f"{model_config.max_seq_len})")
    return seq_len


def init_tokenizer_path(init, given, run_dir: str, info, say) -> str:
    """With --init_from the run reads its corpus with the source's tokenizer, written into the run
    directory (by rank 0, for the others); a given data.tokenizer_path must be that one (or the
    one its vocabulary was expanded from)."""
    if given:
        fingerprint = load_tokenizer(given).fingerprint()
        if fingerprint == init.tokenizer.fingerprint():
            return given
        if not (init.expansion and fingerprint == init.expansion["expanded_from"]):
            raise ConfigError(f"data.tokenizer_path {given} is not the tokenizer of --init_from "
                              f"{init.path} (nor the one its vocabulary was expanded from); drop "
                              "data.tokenizer_path to use the source's")
        say(f"note: data.tokenizer_path is the tokenizer {init.path} was expanded from; the run uses "
            "the expanded one")
    path = os.path.join(run_dir, "init_tokenizer")
    if info.is_main:
        init.write_tokenizer(path)
    return path
