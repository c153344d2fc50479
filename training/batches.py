"""Turn global sample positions into batches, and evaluate on the validation set.

Which sample a position holds, and how it is masked, is a pure function of (seed, position), so
a resumed run, or one with another world size, sees exactly the samples it would have seen."""
import math
from dataclasses import dataclass, field

import torch

from data.samples.windows import SampleOrder
from data.samples.documents import DocumentIndex
from training.parallelism.distributed import all_reduce_sum
from training.objectives import OBJECTIVES
from utils import IGNORE_INDEX

EVAL_SEED = 1234  # evaluation masks are drawn from this fixed seed so two evaluations agree


def make_windows(token_bin, seq_len: int, objective: str, masker=None, document_mask: bool = False,
                 prompt_lengths=None, pair_tokenizer=None):
    """The named objective's windows (training.objectives.Objective.windows), document_mask a flag."""
    documents = DocumentIndex(token_bin.doc_offsets()) if document_mask else None
    return OBJECTIVES[objective].windows(token_bin, seq_len, masker, documents, prompt_lengths, pair_tokenizer)


def _sample_generator(seed: int, position: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + position) % (2**63))
    return g


def fetch(windows, index: int, seed: int, position: int) -> dict:
    """One sample as named tensors: input_ids, labels, and the per-sample fields its windows add
    (document_ids with a document index, in_prefix for a prefix LM, token types for pairs), drawn
    from a generator seeded by (seed, position)."""
    return windows.sample(index, _sample_generator(seed, position))


@dataclass
class Batch:
    """A micro-batch: ids, aligned labels, how many positions carry a label (counted on the host),
    and `fields`, every other per-sample tensor, handed to the model by name (document_ids,
    in_prefix; an objective that needs more, such as token types, adds its field to the sample)."""
    inputs: torch.Tensor
    labels: torch.Tensor
    n_targets: int
    fields: dict = field(default_factory=dict)


def stack(samples, device) -> Batch:
    """Samples (fetch's dicts) stacked into a Batch on `device`; the target count is taken before
    the copy, so normalising the loss never waits for the device."""
    tensors = {name: torch.stack([s[name] for s in samples]) for name in samples[0]}
    n_targets = int((tensors["labels"] != IGNORE_INDEX).sum())
    if device.type == "cuda":
        tensors = {name: t.pin_memory().to(device, non_blocking=True) for name, t in tensors.items()}
    else:
        tensors = {name: t.to(device) for name, t in tensors.items()}
    return Batch(tensors.pop("input_ids"), tensors.pop("labels"), n_targets, tensors)


def collate(windows, order: SampleOrder, positions, seed: int, device) -> Batch:
    return stack([fetch(windows, order.index(p), seed, p) for p in positions], device)


def step_positions(order: SampleOrder, samples_seen: int, micro_batch: int, accumulation: int, rank: int,
                   world: int) -> list:
    """Positions each micro-step of this rank consumes. A step takes the next
    micro_batch * accumulation * world positions, micro-step by micro-step, each split over the ranks
    in contiguous blocks: a single process with a batch of 2B reads what two ranks with B read."""
    block = micro_batch * world
    return [order.rank_positions(samples_seen + a * block, block, rank, world) for a in range(accumulation)]


@torch.no_grad()
def evaluate(model, windows, objective, batch_size: int, max_batches: int, bytes_per_token: float,
             info, device, autocast, max_samples=None) -> dict:
    """Loss, perplexity and the objective's figures (bits per byte; masked: accuracy) over a fixed slice of the
    validation windows, sharded over ranks; sums are reduced, never whole logits kept.
    max_samples (all ranks together; 0 = all), when given, sets the slice instead of max_batches,
    so the windows scored do not depend on the batch size."""
    was_training = model.training
    model.eval()
    limit = max_samples if max_samples is not None else max(0, max_batches) * batch_size * info.world_size
    n = len(windows) if limit <= 0 else min(len(windows), limit)
    mine = list(range(info.rank, n, info.world_size))
    loss_sum = targets = correct = 0.0
    nsp_loss = nsp_correct = pairs = 0.0  # next-sentence prediction, on sentence-pair windows
    for start in range(0, len(mine), batch_size):
        batch = stack([fetch(windows, i, EVAL_SEED, i) for i in mine[start:start + batch_size]], device)
        y = batch.labels
        with autocast:
            out = model(batch.inputs, labels=y, return_logits=objective.masks, **batch.fields)
        loss_sum += out.loss_sum.float().item()
        targets += float(out.n_targets)
        if out.logits is not None and objective.masks:
            correct += (out.logits.argmax(-1) == y[y != IGNORE_INDEX]).sum().item()
        if out.nsp_loss_sum is not None:
            nsp_label = batch.fields["next_sentence_label"]
            nsp_loss += out.nsp_loss_sum.float().item()
            nsp_correct += (out.nsp_logits.argmax(-1) == nsp_label).sum().item()
            pairs += len(nsp_label)
    loss_sum, targets, correct, nsp_loss, nsp_correct, pairs = all_reduce_sum(
        [loss_sum, targets, correct, nsp_loss, nsp_correct, pairs], info, device)
    model.train(was_training)
    if targets == 0:
        return {}
    loss = loss_sum / targets
    metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(targets)}
    metrics.update(objective.eval_metrics(loss, targets, correct, bytes_per_token))
    if pairs:
        metrics.update(val_nsp_loss=nsp_loss / pairs, val_nsp_accuracy=nsp_correct / pairs)
    return metrics
