"""The training loop: one code path for one CPU, one GPU, or many processes under torchrun."""
import contextlib
import math
import os
import shutil
import signal
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.datasets import SampleOrder, TokenBin
from data.tokenizer import load_tokenizer
from model import Transformer
from model.config import ConfigError
from training import checkpoint as ckpt_io
from training.batches import collate, evaluate, make_windows, masker_for, step_positions
from training.config import dump_yaml
from training.distributed import all_reduce_sum, any_rank, barrier, gather_objects
from training.ema import EMA
from training.metrics import MetricsLogger
from training.optim import build_optimizer
from training.rng import capture_rng, restore_rng
from training.run_data import prepare_run_data
from training.schedule import LRScheduler, resolve_warmup
from utils import format_count, resolve_dtype, seed_everything

# Dense bf16/fp16 peak FLOP/s for MFU, by substring of the CUDA device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


class TrainingStopped(RuntimeError):
    """The run stopped on its own (repeated non-finite losses); the message names the step."""


class Trainer:
    def __init__(self, cfg, info, device):
        self.cfg, self.info, self.device = cfg, info, device
        t = cfg.train
        self.run_dir = os.path.join(t.out_dir, t.run_name)
        self.say = tqdm.write if info.is_main else (lambda *_: None)

        paths = prepare_run_data(cfg, info)
        self.tokenizer = load_tokenizer(paths["tokenizer"])
        self.fingerprint = self.tokenizer.fingerprint()
        train_bin, val_bin = TokenBin(paths["train_bin"]), TokenBin(paths["val_bin"])
        for b in (train_bin, val_bin):
            b.check_tokenizer(self.fingerprint)
        model_dict = dict(cfg.model)
        model_dict.setdefault("vocab_size", 64 * math.ceil(self.tokenizer.vocab_size / 64))
        model_dict["pad_token_id"] = self.tokenizer.pad_id
        cfg.model = model_dict
        self.model_config = cfg.model_config(self.tokenizer.vocab_size)
        seq_len = self.model_config.max_seq_len
        objective = self.model_config.objective
        masker = masker_for(cfg, self.tokenizer, eval_mode=False) if objective == "mlm" else None
        eval_masker = masker_for(cfg, self.tokenizer, eval_mode=True) if objective == "mlm" else None
        self.train_windows = make_windows(train_bin, seq_len, objective, masker)
        self.val_windows = make_windows(val_bin, seq_len, objective, eval_masker)
        if len(self.train_windows) == 0 or len(self.val_windows) == 0:
            raise ConfigError(f"the corpus is too small for model.max_seq_len={seq_len}: "
                              f"{len(self.train_windows)} train / {len(self.val_windows)} validation windows")
        self.order = SampleOrder(len(self.train_windows), t.seed)
        self.bytes_per_token = val_bin.meta["n_text_bytes"] / max(1, val_bin.meta["n_tokens"])
        self.global_batch = t.batch_size * t.accumulation_steps * info.world_size
        steps_per_epoch = max(1, len(self.train_windows) // self.global_batch)
        self.total_steps = t.max_steps if t.max_steps > 0 else t.epochs * steps_per_epoch
        try:
            self.warmup_steps = resolve_warmup(t.warmup, self.total_steps)
        except ValueError as e:
            raise ConfigError(f"train.warmup: {e}")

        self.dtype = resolve_dtype(t.dtype, device)
        if device.type == "cpu" and self.dtype != torch.float32:
            self.say(f"note: {t.dtype} autocast on CPU is honoured but is usually far slower than float32 here")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

        seed_everything(t.seed)  # identical initial weights on every rank
        self.raw_model = Transformer(self.model_config).to(device)
        self.optimizer = build_optimizer(self.raw_model, t, device)
        self.scheduler = LRScheduler(self.optimizer, base_lr=t.learning_rate, min_lr=t.min_lr,
                                     warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                                     kind=t.lr_scheduler, power=t.lr_power)
        self.ema = EMA(self.raw_model, t.ema_decay) if t.use_ema else None
        self.step = self.samples_seen = self.nan_in_a_row = self.nan_total = 0
        self.best_loss, self.best_step, self.bad_evals = math.inf, -1, 0
        resume_path = self._resume_path()
        if resume_path:
            self._load(resume_path)
        else:
            seed_everything(t.seed + info.rank)  # dropout streams differ per rank

        self.model = self.raw_model
        if t.compile:
            self.raw_model.compile_blocks()
        if info.enabled:
            self.model = DistributedDataParallel(self.raw_model, device_ids=[device.index] if device.type == "cuda" else None)
        self.peak_flops = t.peak_flops or next((v for k, v in PEAK_FLOPS.items()
                                                if device.type == "cuda" and k in torch.cuda.get_device_name(device)), 0.0)
        if info.is_main:
            self._prepare_run_dir(paths["tokenizer"], resume_path)
        self.logger = MetricsLogger(self.run_dir, enabled=info.is_main, tensorboard=t.tensorboard,
                                    wandb=t.use_wandb, wandb_project=t.wandb_project,
                                    wandb_run_name=t.wandb_run_name, config=cfg.to_dict())
        self.stop_signal = None

    # ---- set-up helpers -------------------------------------------------------------------
    def _resume_path(self):
        t = self.cfg.train
        if t.resume_from:
            return t.resume_from
        if t.resume:
            path = ckpt_io.latest_checkpoint(self.run_dir)
            if path is None:
                raise ConfigError(f"--resume: no checkpoint in {self.run_dir}; drop --resume to start a new run")
            return path
        if self.info.is_main and (ckpt_io.step_checkpoints(self.run_dir) or
                                  os.path.exists(os.path.join(self.run_dir, ckpt_io.INTERRUPTED))):
            if not t.force_fresh:
                raise ConfigError(f"{self.run_dir} already holds checkpoints; pass --resume to continue "
                                  "or --force-fresh to start over (its checkpoints will be removed)")
        return None

    def _prepare_run_dir(self, tokenizer_path, resume_path):
        os.makedirs(self.run_dir, exist_ok=True)
        if self.cfg.train.force_fresh and not resume_path:
            removed = ckpt_io.remove_run_checkpoints(self.run_dir)
            for name in ("metrics.jsonl", "best.pth"):
                if os.path.exists(os.path.join(self.run_dir, name)):
                    os.remove(os.path.join(self.run_dir, name))
            if removed:
                self.say(f"--force-fresh: removed {removed} checkpoint(s) from {self.run_dir}")
        if os.path.abspath(tokenizer_path) != os.path.abspath(os.path.join(self.run_dir, "tokenizer.json")):
            shutil.copyfile(tokenizer_path, os.path.join(self.run_dir, "tokenizer.json"))
        with open(os.path.join(self.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(dump_yaml(self.cfg))
        metrics = os.path.join(self.run_dir, "metrics.jsonl")
        if resume_path and os.path.exists(metrics):
            self._truncate_metrics(metrics)

    def _truncate_metrics(self, path):
        """Drop records logged after the checkpoint we resume from, so the file reads as one run."""
        import json
        keep = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line)
                except ValueError:
                    pass  # a line cut by a kill
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(keep)

    def _load(self, path):
        state = ckpt_io.load_checkpoint(path, map_location=self.device)
        if state.get("tokenizer_fingerprint") != self.fingerprint:
            raise ckpt_io.CheckpointError(f"cannot resume {path}: it was trained with another tokenizer")
        saved = dict(state["model_config"])
        current = self.model_config.to_dict()
        for key in ("dropout", "gradient_checkpointing"):  # these may change between runs
            saved.pop(key, None), current.pop(key, None)
        if saved != current:
            diff = ", ".join(f"{k}: {saved.get(k)} -> {current.get(k)}" for k in sorted(set(saved) | set(current))
                             if saved.get(k) != current.get(k))
            raise ckpt_io.CheckpointError(f"cannot resume {path}: the model shape differs ({diff})")
        ckpt_io.load_weights(self.raw_model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                self.say("note: the checkpoint has no EMA weights; EMA starts from the current weights")
            else:
                self.ema.load_state_dict(state["ema"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        self.nan_in_a_row, self.nan_total = state["nan"]["in_a_row"], state["nan"]["total"]
        es = state["early_stopping"]
        self.best_loss, self.best_step, self.bad_evals = es["best_loss"], es["best_step"], es["bad_evals"]
        rng = state["rng"]
        if len(rng) == self.info.world_size:
            restore_rng(rng[self.info.rank])
        else:  # another world size: the data position maps exactly, dropout streams are reseeded
            seed_everything(self.cfg.train.seed + self.info.rank + self.step)
        self.say(f"resumed from {path} at step {self.step} ({format_count(self.samples_seen)} samples seen)")

    # ---- checkpoints ----------------------------------------------------------------------
    def _state(self, full: bool) -> dict:
        state = {"format": 1, "model": self.raw_model.state_dict(),
                 "ema": self.ema.state_dict() if self.ema else None,
                 "model_config": self.model_config.to_dict(), "config": self.cfg.to_dict(),
                 "tokenizer_fingerprint": self.fingerprint, "step": self.step,
                 "samples_seen": self.samples_seen, "epoch": self.samples_seen // len(self.train_windows),
                 "best_val_loss": self.best_loss}
        if full:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict(), world_size=self.info.world_size,
                         nan={"in_a_row": self.nan_in_a_row, "total": self.nan_total},
                         early_stopping={"best_loss": self.best_loss, "best_step": self.best_step,
                                         "bad_evals": self.bad_evals})
        return state

    def save(self, name: str) -> str:
        rng = gather_objects(capture_rng(), self.info)  # collective: every rank calls it
        path = os.path.join(self.run_dir, name)
        if self.info.is_main:
            state = self._state(full=True)
            state["rng"] = rng
            ckpt_io.atomic_save(state, path)
            ckpt_io.prune_checkpoints(self.run_dir, self.cfg.train.keep_last)
        barrier(self.info)
        return path

    # ---- one optimizer step ---------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def train_step(self):
        t, info = self.cfg.train, self.info
        batches = [collate(self.train_windows, self.order, pos, t.seed, self.device)
                   for pos in step_positions(self.order, self.samples_seen, t.batch_size, t.accumulation_steps,
                                             info.rank, info.world_size)]
        # Normalise by the global number of targets, so any split into micro-batches and ranks
        # gives the same gradient (masked LM batches hold different numbers of targets).
        local_targets = sum(int((y != -100).sum()) for _, y in batches)
        global_targets = max(1.0, all_reduce_sum([local_targets], info, self.device)[0])
        loss_total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not info.enabled else self.model.no_sync()
            with sync:
                with self.autocast():
                    out = self.model(x, labels=y, return_logits=False)
                loss = out.loss_sum.float() * (info.world_size / global_targets)
                self.scaler.scale(loss).backward()
            loss_total += out.loss_sum.detach().float()
        loss_value = all_reduce_sum([loss_total.item()], info, self.device)[0] / global_targets
        self.scaler.unscale_(self.optimizer)
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip))
        finite = math.isfinite(loss_value) and (self.scaler.is_enabled() or math.isfinite(grad_norm))
        if finite:
            self.scaler.step(self.optimizer)  # with float16 the scaler itself skips overflowing steps
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.raw_model)
            self.nan_in_a_row = 0
        else:
            self.nan_in_a_row += 1
            self.nan_total += 1
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, finite

    # ---- the run --------------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self.stop_signal = signal.Signals(signum).name

    def run_evaluation(self) -> dict:
        t = self.cfg.train
        swap = self.ema.swap_into(self.raw_model) if self.ema else contextlib.nullcontext()
        with swap:
            metrics = evaluate(self.raw_model, self.val_windows, t.batch_size, t.eval_batches,
                               self.bytes_per_token, self.info, self.device, self.autocast())
        improved = metrics["val_loss"] < self.best_loss - t.min_delta
        if improved:
            self.best_loss, self.best_step, self.bad_evals = metrics["val_loss"], self.step, 0
            if self.info.is_main:
                ckpt_io.atomic_save(self._state(full=False), os.path.join(self.run_dir, "best.pth"))
        else:
            self.bad_evals += 1
        return metrics

    def train(self) -> dict:
        t, info = self.cfg.train, self.info
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.say(f"training {format_count(self.raw_model.num_params())} parameters ({self.model_config.objective}) "
                 f"on {self.device} x{info.world_size}, {self.dtype}, global batch {self.global_batch} x "
                 f"{self.model_config.max_seq_len} tokens, {self.total_steps} steps -> {self.run_dir}")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not info.is_main, dynamic_ncols=True,
                   unit="step")
        tokens_per_step = self.global_batch * self.model_config.max_seq_len
        flops_per_token = self.raw_model.flops_per_token()
        outcome, last_eval, started = "completed", {}, time.perf_counter()
        try:
            while self.step < self.total_steps:
                tick = time.perf_counter()
                self.scheduler.step()
                lr = self.scheduler.last_lr
                loss, grad_norm, finite = self.train_step()
                self.step += 1
                self.samples_seen += self.global_batch
                dt = time.perf_counter() - tick
                tok_s = tokens_per_step / dt
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=format_count(tok_s))
                if self.step % t.log_interval == 0 or not finite:
                    record = {"split": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                              "tokens_per_s": tok_s, "epoch": self.samples_seen / len(self.train_windows),
                              "skipped_steps": self.nan_total}
                    if self.peak_flops:
                        record["mfu"] = flops_per_token * tok_s / (self.peak_flops * info.world_size)
                    self.logger.log(record)
                if not finite:
                    self.say(f"step {self.step}: non-finite loss, update skipped ({self.nan_in_a_row} in a row)")
                    if self.nan_in_a_row >= t.max_nan_steps:
                        path = self.save(f"checkpoint_step_{self.step}.pth")
                        raise TrainingStopped(f"stopped at step {self.step}: {self.nan_in_a_row} non-finite losses "
                                              f"in a row (lower the learning rate or check the data); saved {path}")
                if self.step % t.eval_interval == 0 or self.step == self.total_steps:
                    last_eval = self.run_evaluation()
                    self.logger.log({"split": "eval", "step": self.step, **last_eval})
                    self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()
                                                               if isinstance(v, float)))
                if self.step % t.save_interval == 0 or self.step == self.total_steps:
                    self.save(f"checkpoint_step_{self.step}.pth")
                if t.early_stopping and self.bad_evals >= t.patience:
                    self.say(f"early stopping at step {self.step}: no improvement in {t.patience} evaluations "
                             f"(best {self.best_loss:.4f} at step {self.best_step})")
                    outcome = "early_stopped"
                    self.save(f"checkpoint_step_{self.step}.pth")
                    break
                if any_rank(self.stop_signal is not None, info, self.device):
                    path = self.save(ckpt_io.INTERRUPTED)
                    self.say(f"interrupted by {self.stop_signal or 'another rank'} at step {self.step}; saved {path}")
                    outcome = "interrupted"
                    break
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
            self.logger.close()
        if outcome != "interrupted" and info.is_main:
            stale = os.path.join(self.run_dir, ckpt_io.INTERRUPTED)
            if os.path.exists(stale):
                os.remove(stale)
        summary = {"outcome": outcome, "step": self.step, "best_val_loss": self.best_loss,
                   "best_step": self.best_step, "skipped_steps": self.nan_total,
                   "seconds": time.perf_counter() - started, "run_dir": self.run_dir, **last_eval}
        return summary
