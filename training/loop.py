"""The training loop: one code path for one CPU, one GPU, or many processes under torchrun.

The run's state is a set of parts (training.run_state.StateParts): a checkpoint saves each part's
state_dict and a resume loads each back, through the one checkpoint module."""
import dataclasses
import math
import os
import time

import torch
from tqdm import tqdm

import checkpoint as ckpt
from checkpoint.run_files import remove_superseded_interrupted
from data.samples.windows import SampleOrder
from model import LMConfig, Transformer
from training.batches import collate, evaluate, step_positions
from training.config import eval_samples_on_resume
from training.parallelism.distributed import all_reduce_, any_rank, barrier
from training.optimization.ema import EMA
from training.optimization.freeze import Freezer
from training.reporting.metrics import MetricsLogger
from training.optimization.optimizers import allocate_state, build_optimizer, describe_muon, is_fused
from training.parallelism.strategies import parallelize
from training.plan import say_for
from training.run_dir import find_resume_path, prepare_run_dir
from training.run_state import DataIdentity, EarlyStopping, NaNGuard, Progress, RNGStreams, StateParts
from training.optimization.schedule import LRScheduler, extension_note
from training.signals import StopSignals
from training.reporting.throughput import mfu, peak_flops
from utils import format_count, resolve_dtype, seed_everything


class TrainingStopped(RuntimeError):
    """The run stopped on its own (repeated non-finite losses); the message names the step."""


class Cadence:
    """Which steps log, evaluate and save; the last step always evaluates and saves."""

    def __init__(self, t, total_steps: int):
        self.t, self.total = t, total_steps

    def log(self, step: int) -> bool:
        return step % self.t.log_interval == 0

    def evaluate(self, step: int) -> bool:
        return step % self.t.eval_interval == 0 or step == self.total

    def save(self, step: int) -> bool:
        return step % self.t.save_interval == 0 or step == self.total


class Trainer:
    """Trains the run a RunPlan (training.plan.build_plan) describes. The configuration it records
    is the plan's; the one the plan was built from is never written to."""

    def __init__(self, plan, info, device):
        self.plan, self.info, self.device = plan, info, device
        self.cfg = cfg = plan.config  # replaced, never changed, when a resume keeps the first run's eval_samples
        t = cfg.train
        self.run_dir, self.say = plan.run_dir, say_for(info)
        self.init, self.tokenizer, self.model_config = plan.init, plan.tokenizer, plan.model_config
        self.train_windows, self.val_windows, self.seq_len = plan.train_windows, plan.val_windows, plan.seq_len
        self.global_batch, self.total_steps = plan.global_batch, plan.total_steps
        self.order = SampleOrder(len(self.train_windows), t.seed)
        self.sample_loss = plan.objective.sample_loss(cfg.data)  # a loss over samples beside the token loss
        self.dtype = resolve_dtype(t.dtype, device)
        if device.type == "cpu" and self.dtype != torch.float32:
            self.say(f"note: {t.dtype} autocast on CPU is honoured but is usually far slower than float32 here")
        # On a GPU the host reads losses and counters only on log steps; on a CPU reading is free,
        # so non-finite steps are reported the step they happen.
        self.check_every_step = device.type != "cuda"

        seed_everything(t.seed)  # identical initial weights on every rank
        self.raw_model = Transformer(self.model_config).to(device)
        if self.init is not None:
            ckpt.load_weights(self.raw_model, self._init_weights(), self.init.path)
            self.say(f"--init_from {self.init.path}: weights loaded; optimizer, schedule and step start fresh")
        self.expansion = self.init.expansion if self.init is not None else None
        new_rows = None if self.expansion is None else (self.expansion["new_rows_from"], self.tokenizer.vocab_size)
        self.freezer = Freezer(self.raw_model, t.trainable, new_rows)
        self.say(f"--trainable {t.trainable}: {self.freezer.describe()}")
        if t.compile:
            self.raw_model.compile_blocks()
        # Before the optimizer and EMA see the parameters: FSDP replaces them by their shards.
        self.parallel = parallelize(self.raw_model, cfg, info, device)
        self.model = self.parallel.model
        self.optimizer = build_optimizer(self.raw_model, t, device)
        self.scheduler = LRScheduler(self.optimizer, base_lr=t.learning_rate, min_lr=t.min_lr,
                                     warmup_steps=plan.warmup_steps, total_steps=self.total_steps,
                                     kind=t.lr_scheduler, power=t.lr_power, decay_fraction=t.decay_fraction,
                                     decay_shape=t.decay_shape)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.ema = EMA(self.raw_model, t.ema_decay) if t.use_ema else None
        self.progress = Progress()
        self.early = EarlyStopping(t.early_stopping, t.patience, t.min_delta)
        self.nan_guard = NaNGuard(t.max_nan_steps, device)
        self.parts = StateParts(model=self.raw_model, optimizer=self.optimizer, scheduler=self.scheduler,
                                scaler=self.scaler, progress=self.progress, early_stopping=self.early,
                                nan_guard=self.nan_guard, rng=RNGStreams(info, t.seed, self.progress),
                                data=DataIdentity(plan.train_identity, self.seq_len, t.seed, t.batch_size,
                                                  t.accumulation_steps, info.world_size, self.say))
        if self.ema is not None:
            self.parts["ema"] = self.ema
            self.parts["ema_updates"] = self.ema.counter  # the warm-up's place: a resume continues it

        self.resume_path = resume_path = find_resume_path(t, self.run_dir, info.is_main)
        if resume_path:
            self._resume(resume_path)
        else:
            seed_everything(t.seed + info.rank)  # dropout streams differ per rank
        # A resume already at (or past) its last step trains nothing: it leaves the directory as it is.
        self.nothing_to_do = bool(resume_path) and self.step >= self.total_steps
        self.written = []  # names of the files this run wrote, for its closing message

        self.peak_flops = peak_flops(device, t.peak_flops)
        self.head_fraction = plan.objective.head_fraction(cfg.data.mask_rate)
        if info.is_main and not self.nothing_to_do:
            self.written += prepare_run_dir(self.run_dir, self.cfg, self.tokenizer, resume_path, self.step, self.say)
        self.logger = MetricsLogger(self.run_dir, enabled=info.is_main and not self.nothing_to_do,
                                    tensorboard=t.tensorboard,
                                    wandb=t.use_wandb, wandb_project=t.wandb_project,
                                    wandb_run_name=t.wandb_run_name, config=self.cfg.to_dict(),
                                    start_step=self.step)

    @property
    def step(self) -> int:
        return self.progress.step

    # ---- set-up ---------------------------------------------------------------------------
    def _init_weights(self) -> dict:
        """The source's weights; with data.pairs, a source without a next-sentence head (a masked LM,
        an encoder) gets this model's freshly initialised one, said in one line."""
        weights = self.init.weights
        if self.cfg.data.pairs and not any(k.startswith("next_sentence.") for k in weights):
            head = {k: v for k, v in self.raw_model.state_dict().items() if k.startswith("next_sentence.")}
            self.say(f"note: --init_from {self.init.path} has no next-sentence head; it starts freshly initialised "
                     f"for data.pairs ({len(head)} tensors)")
            weights = {**weights, **head}
        return weights

    def _read_resume(self, path) -> dict:
        if not (self.parallel.sharded or ckpt.is_sharded(path)):
            return ckpt.load_checkpoint(path, map_location=self.device)
        # Sharded on either side: each saved tensor is read into (or cut to) this rank's live one.
        allocate_state(self.optimizer)
        return ckpt.load_for_resume(path, self.parts.state_dicts(), map_location=self.device)

    def _resume(self, path):
        state = self._read_resume(path)
        if state.get("kind") != "train":
            raise ckpt.CheckpointError(f"cannot resume {path}: it holds weights only (best.pth); resume from a "
                                       "checkpoint_step_N.pth or checkpoint_interrupted.pth")
        if state.get("tokenizer_fingerprint") != self.plan.fingerprint:
            raise ckpt.CheckpointError(f"cannot resume {path}: it was trained with another tokenizer")
        # Through LMConfig so keys added since the checkpoint was written compare as their defaults.
        saved, current = LMConfig.from_dict(dict(state["model_config"])).to_dict(), self.model_config.to_dict()
        for key in ("dropout", "gradient_checkpointing"):  # these may change between runs
            saved.pop(key, None), current.pop(key, None)
        if saved != current:
            diff = ", ".join(f"{k}: {saved.get(k)} -> {current.get(k)}" for k in sorted(set(saved) | set(current))
                             if saved.get(k) != current.get(k))
            raise ckpt.CheckpointError(f"cannot resume {path}: the model shape differs ({diff})")
        ckpt.load_weights(self.raw_model, state["model"], path)
        rest = StateParts((k, v) for k, v in self.parts.items() if k != "model")
        if self.ema is not None and state.get("ema") is None:
            self.say(f"note: {path} has no EMA weights; EMA starts from the current weights")
            rest.pop("ema"), rest.pop("ema_updates")
        elif self.ema is not None and state.get("ema_updates") is None:  # written before the warm-up
            rest.pop("ema_updates")
            self.ema.num_updates = int(state["progress"]["step"])
        kept = eval_samples_on_resume(self.cfg.train, state.get("config", {}).get("train", {}))
        if kept is not None:
            self.say(f"note: eval_batches {self.cfg.train.eval_batches} is kept as the first run's "
                     f"{kept} validation samples (not {self.cfg.train.eval_samples} at this batch size)")
            self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, eval_samples=kept))
        if state.get("data") is None:  # written before checkpoints recorded their data
            self.say(f"note: {path} does not record its training data; the data is not compared")
            rest.pop("data")
        saved_schedule = dict(state["scheduler"]["schedule"])  # every format-2 checkpoint records it
        ckpt.restore_parts(state, rest, path, say=self.say)
        changed = [f"{k} {saved_schedule[k]} -> {self.scheduler.schedule[k]}" for k in sorted(saved_schedule)
                   if self.scheduler.schedule.get(k) != saved_schedule[k]]
        extended = extension_note(saved_schedule, self.scheduler.schedule, self.step)
        if extended:
            self.say(extended)
        if changed:
            self.say(f"note: the learning-rate schedule differs from the checkpoint's and the new one applies "
                     f"from step {self.step}: {', '.join(changed)}")
        self.say(f"resumed from {path} at step {self.step} ({format_count(self.progress.samples_seen)} samples seen)")

    # ---- checkpoints ----------------------------------------------------------------------
    def _meta(self, kind: str) -> ckpt.CheckpointMeta:
        return ckpt.CheckpointMeta(kind=kind, step=self.step, model_config=self.model_config.to_dict(),
                                   config=self.cfg.to_dict(), tokenizer=self.tokenizer,
                                   evaluated="ema" if self.ema is not None else "model",
                                   vocab_expansion=self.expansion)

    def _write(self, path: str, parts: dict, kind: str) -> None:
        ckpt.write(path, parts, self._meta(kind))

    def save(self, name: str) -> str:
        """Write every part (a collective: each rank gives its RNG state); rank 0 writes the file,
        or, sharded (FSDP), every rank writes its shards of name's .dcp directory."""
        states = self.parts.state_dicts()
        path = os.path.join(self.run_dir, name)
        if self.parallel.sharded:
            from checkpoint import sharded  # torch.distributed.checkpoint loads for sharded runs only
            path = os.path.join(self.run_dir, ckpt.sharded_name(name))
            sharded.write(path, states, self._meta(kind="train"))
        elif self.info.is_main:
            self._write(path, states, kind="train")
        if self.info.is_main:
            ckpt.prune_checkpoints(self.run_dir, self.cfg.train.keep_last)
        self.written.append(os.path.basename(path))
        barrier(self.info)
        return path

    def save_best(self) -> None:
        weights = {"model": self.raw_model.state_dict(), "progress": self.progress.state_dict()}
        if self.ema is not None:
            weights["ema"] = self.ema.state_dict()
        weights = ckpt.full_tensors(weights)  # under FSDP every rank gives its shards
        if self.info.is_main:
            self._write(os.path.join(self.run_dir, ckpt.BEST), weights, kind="weights")
        self.written.append(ckpt.BEST)

    # ---- one optimizer step ---------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _global_targets(self, local: int):
        """Labelled positions over every rank and micro-batch: a Python number in one process, a
        device tensor under DDP (reduced without the host waiting)."""
        if not self.info.enabled:
            return float(max(1, local))
        count = torch.tensor(float(local), dtype=torch.float64, device=self.device)
        return all_reduce_(count, self.info).clamp_(min=1.0)

    def train_step(self):
        """One optimizer step. Returns (loss, grad_norm, finite) as device tensors: nothing here
        makes the host wait for the device."""
        t, info = self.cfg.train, self.info
        batches = [collate(self.train_windows, self.order, pos, t.seed, self.device)
                   for pos in step_positions(self.order, self.progress.samples_seen, t.batch_size,
                                             t.accumulation_steps, info.rank, info.world_size)]
        # Normalise by the global number of targets, so any split into micro-batches and ranks
        # gives the same gradient (masked LM batches hold different numbers of targets).
        global_targets = self._global_targets(sum(b.n_targets for b in batches))
        scale = info.world_size / global_targets
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        samples_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # the objective's loss over samples
        for i, b in enumerate(batches):
            with self.parallel.no_sync(last_micro_step=i == len(batches) - 1):
                with self.autocast():
                    out = self.model(b.inputs, labels=b.labels, return_logits=False, **b.fields)
                step_loss = out.loss_sum.float() * scale
                per_samples = getattr(out, self.sample_loss) if self.sample_loss else None
                if per_samples is not None:  # a mean over the step's samples
                    step_loss = step_loss + per_samples.float() / (t.batch_size * t.accumulation_steps)
                    samples_sum += per_samples.detach()
                self.scaler.scale(step_loss).backward()
            loss_sum += out.loss_sum.detach()
        loss = all_reduce_(loss_sum, info) / global_targets
        if self.sample_loss:
            loss = loss + all_reduce_(samples_sum, info) / self.global_batch
        self.scaler.unscale_(self.optimizer)
        grad_norm = self.parallel.clip_grad_norm(t.grad_clip if t.grad_clip > 0 else float("inf"))
        finite = torch.isfinite(loss)
        if not self.scaler.is_enabled():  # with float16 the scaler skips overflowing steps itself
            finite &= torch.isfinite(grad_norm)
        self._update(finite)
        self.nan_guard.observe(finite)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, finite

    def _update(self, finite: torch.Tensor) -> None:
        """Apply the step only when it is finite: decided on the device where the fused optimizer
        can skip by itself (GPU), by the host otherwise (a CPU, where looking costs nothing)."""
        if not self.check_every_step and is_fused(self.optimizer) and not self.scaler.is_enabled():
            self.optimizer.found_inf = (~finite).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
            self.freezer.after_step()
            if self.ema is not None:
                self.ema.update(self.raw_model, gate=finite)
            return
        if bool(finite):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.freezer.after_step()
            if self.ema is not None:
                self.ema.update(self.raw_model)

    # ---- the run --------------------------------------------------------------------------
    def _score(self) -> dict:
        t = self.cfg.train
        return evaluate(self.raw_model, self.val_windows, self.plan.objective, t.batch_size, 0,
                        self.plan.bytes_per_token, self.info, self.device, self.autocast(), max_samples=t.eval_samples)

    def run_evaluation(self) -> dict:
        if self.ema is None:
            metrics = self._score()
        else:
            with self.ema.swap_into(self.raw_model):
                metrics = self._score()
            # The trained weights on the same windows (one more pass of the small validation
            # slice): an average that lags the training shows as a worse EMA score.
            raw = self._score()
            if "val_loss" in raw:
                metrics["raw_val_loss"] = raw["val_loss"]
        if self.early.observe(metrics["val_loss"], self.step):
            self.save_best()
            self.say(f"step {self.step}: new best validation loss {metrics['val_loss']:.4f}, saved best.pth")
        elif self.early.enabled:
            self.say(f"step {self.step}: no improvement {self.early.bad_evals}/{self.early.patience} "
                     f"(best {self.early.best_loss:.4f} at step {self.early.best_step})")
        return metrics

    def _log_train(self, loss, grad_norm, lr, tok_s, bar) -> None:
        loss, grad_norm = float(loss), float(grad_norm)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=format_count(tok_s))
        record = {"split": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tok_s, "epoch": self.progress.samples_seen / len(self.train_windows),
                  "skipped_steps": self.nan_guard.total}
        utilisation = mfu(self.raw_model, tok_s, self.peak_flops, self.info.world_size, self.head_fraction)
        if math.isfinite(utilisation):
            record["mfu"] = utilisation
        self.logger.log(record)

    def _check_non_finite(self, finite) -> bool:
        """Report skipped steps; stop with a checkpoint when too many came in a row."""
        if bool(finite):
            return False
        self.say(f"step {self.step}: non-finite loss, update skipped ({self.nan_guard.in_a_row} in a row)")
        if self.nan_guard.should_stop:
            path = self.save(f"checkpoint_step_{self.step}.pth")
            raise TrainingStopped(f"stopped at step {self.step}: {self.nan_guard.in_a_row} non-finite losses "
                                  f"in a row (lower the learning rate or check the data); saved {path}")
        return True

    def _evaluate_and_log(self) -> dict:
        metrics = self.run_evaluation()
        self.logger.log({"split": "eval", "step": self.step, **metrics})
        line = f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        if metrics.get("raw_val_loss", math.inf) < metrics.get("val_loss", -math.inf):
            line += (" -- the EMA weights score worse than the raw weights (the average still lags the "
                     "training); evaluation, best.pth and early stopping use the EMA")
        self.say(line)
        return metrics

    def train(self) -> dict:
        t, info = self.cfg.train, self.info
        if self.nothing_to_do:
            return {"outcome": "nothing_to_do", "step": self.step, "max_steps": self.total_steps,
                    "resumed_from": self.resume_path, "run_dir": self.run_dir}
        cadence = Cadence(t, self.total_steps)
        threads = f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""
        self.say(f"training {format_count(self.raw_model.num_params())} parameters ({self.model_config.objective}) "
                 f"on {self.device} x{info.world_size}{threads}, {self.dtype}, global batch {self.global_batch} x "
                 f"{self.seq_len} tokens, {self.total_steps} steps -> {self.run_dir}")
        if t.optimizer_type == "muon":  # the iteration's share, from the real shapes (per rank)
            step_flops = self.raw_model.flops_per_token(self.head_fraction) * self.global_batch * self.seq_len
            self.say(describe_muon(self.optimizer, step_flops / info.world_size))
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not info.is_main, dynamic_ncols=True,
                   unit="step")
        tokens_per_step = self.global_batch * self.seq_len
        outcome, last_eval, started = "completed", {}, time.perf_counter()
        window_start, window_steps = time.perf_counter(), 0
        with StopSignals() as signals:
            try:
                while self.step < self.total_steps:
                    lr = self.scheduler.step()
                    loss, grad_norm, finite = self.train_step()
                    self.progress.step += 1
                    self.progress.samples_seen += self.global_batch
                    window_steps += 1
                    bar.update(1)
                    check = self.check_every_step or cadence.log(self.step)
                    skipped = check and self._check_non_finite(finite)
                    if cadence.log(self.step) or skipped:
                        now = time.perf_counter()  # the host has waited for the device by reading the loss
                        tok_s = tokens_per_step * window_steps / max(now - window_start, 1e-9)
                        self._log_train(loss, grad_norm, lr, tok_s, bar)
                        window_start, window_steps = time.perf_counter(), 0
                    if self.val_windows is not None and cadence.evaluate(self.step):
                        last_eval = self._evaluate_and_log()
                    if cadence.save(self.step):
                        self.save(f"checkpoint_step_{self.step}.pth")
                    if self.early.should_stop:
                        self.say(f"early stopping at step {self.step}: no improvement in {t.patience} evaluations "
                                 f"(best {self.early.best_loss:.4f} at step {self.early.best_step})")
                        outcome = "early_stopped"
                        self.save(f"checkpoint_step_{self.step}.pth")
                        break
                    # Under DDP the ranks agree on stopping with a collective: on a GPU only at checks.
                    if check and any_rank(signals.received is not None, info, self.device):
                        path = self.save(ckpt.INTERRUPTED)
                        self.say(f"interrupted by {signals.received or 'another rank'} at step {self.step}; saved {path}")
                        outcome = "interrupted"
                        break
            finally:
                bar.close()
                self.logger.close()
        if outcome != "interrupted" and info.is_main:  # its last step's checkpoint supersedes them
            remove_superseded_interrupted(self.run_dir, self.step)
        return {"outcome": outcome, "step": self.step, "best_val_loss": self.early.best_loss,
                "best_step": self.early.best_step, "skipped_steps": self.nan_guard.total,
                "seconds": time.perf_counter() - started, "run_dir": self.run_dir,
                "has_validation": self.val_windows is not None, "written": self._written_files(), **last_eval}

    def _written_files(self) -> list:
        """What this run wrote and the directory still holds (pruning drops old checkpoints), each once."""
        names = self.written + (["metrics.jsonl"] if self.logger.logged else [])
        names = [n for i, n in enumerate(names) if n not in names[:i] and os.path.exists(os.path.join(self.run_dir, n))]
        order = {ckpt.BEST: 0, "metrics.jsonl": 2}
        return sorted(names, key=lambda n: 1 if n.startswith("checkpoint_") else order.get(n, 3))
