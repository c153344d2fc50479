"""The training objectives, one object each: what sets one apart from another is asked of it here,
so the loop, evaluation, throughput and --init_from never branch on the objective's name.

Adding an objective: its windows class (data/), a class below in OBJECTIVES, and its name in
model/config.py's OBJECTIVES (the model validates the name without importing training/)."""
from abc import ABC, abstractmethod
import math
from typing import Optional

from data.samples.windows import CausalWindows, MaskedWindows, PrefixWindows
from data.samples.documents import DocumentIndex
from data.samples.masking import MLMMasker
from data.samples.pairs import PairWindows
from data.samples.word_starts import WordStarts
from utils import ConfigError


def masker_for(data, tokenizer, eval_mode: bool) -> MLMMasker:
    """The masker of a DataConfig's rates: the training mask rate, or the evaluation one."""
    return MLMMasker(tokenizer.mask_id, tokenizer.special_ids, tokenizer.vocab_size,
                     mask_rate=data.eval_mask_rate if eval_mode else data.mask_rate,
                     mask_token_frac=data.mask_token_frac, random_token_frac=data.random_token_frac)


class Objective(ABC):
    """What an objective answers; a registered one must build its windows (it cannot be made otherwise)."""
    name = ""
    causal = True           # a decoder: the next token is the target, so a window reads seq_len + 1 tokens
    masks = False           # its samples are masked (a masker, a mask token)
    report_kind = ""        # evaluate.py's report: "<kind> LM"
    report_targets = "targets"  # what evaluate.py's report counts

    def window_tokens(self, seq_len: int) -> int:
        """Tokens one window of seq_len inputs reads."""
        return seq_len + 1 if self.causal else seq_len

    # ---- the run's flags ------------------------------------------------------------------
    def takes_pairs(self, model_config) -> bool:
        return False

    def takes_prompts(self, model_config) -> bool:
        return False

    def check(self, model_config, data) -> None:
        """The data flags this objective (with this model) cannot train: one line each."""
        if data.pairs and not self.takes_pairs(model_config):
            raise ConfigError("data.pairs needs a masked model with two token types and one pair per window: "
                              "model.objective mlm, model.token_types >= 2 (model.arch bert) and no model.document_mask")
        if data.prefix_field and not self.takes_prompts(model_config):
            raise ConfigError("data.prefix_field makes each document's prompt its prefix: it needs "
                              "model.objective plm and model.document_mask true")
        if data.whole_word_mask and not self.masks:
            raise ConfigError(f"data.whole_word_mask is for masked models (model.objective mlm), not {self.name}")

    # ---- samples --------------------------------------------------------------------------
    @abstractmethod
    def windows(self, token_bin, seq_len: int, masker=None, documents=None, prompt_lengths=None,
                pair_tokenizer=None):
        """The windows over token_bin. documents: a DocumentIndex (model.document_mask);
        prompt_lengths (plm with documents): each document's prompt is its prefix; pair_tokenizer
        (mlm): sentence pairs framed with its [CLS] and [SEP], for next-sentence prediction."""

    def run_windows(self, token_bin, seq_len: int, model_config, data, tokenizer, train: bool,
                    prompt_lengths=None):
        """A run's training (train) or validation windows, from its model config and DataConfig."""
        documents = DocumentIndex(token_bin.doc_offsets()) if model_config.document_mask else None
        return self.windows(token_bin, seq_len, documents=documents, prompt_lengths=prompt_lengths)

    # ---- training and evaluation ----------------------------------------------------------
    def head_fraction(self, mask_rate: float) -> float:
        """Share of positions whose vocabulary logits a training step computes (for MFU): all of
        them here (a prefix LM's head runs on its prefix too)."""
        return 1.0

    def sample_loss(self, data) -> Optional[str]:
        """The model output holding a loss summed over samples that trains beside the token loss
        (normalised by the number of samples), or None."""
        return None

    def eval_metrics(self, loss: float, targets: float, correct: float, bytes_per_token: float) -> dict:
        """The objective's own validation figures; correct: targets predicted right (masks only)."""
        return {"val_bpb": loss / math.log(2) / bytes_per_token}


class Causal(Objective):
    name, report_kind = "clm", "causal"

    def windows(self, token_bin, seq_len, masker=None, documents=None, prompt_lengths=None, pair_tokenizer=None):
        return CausalWindows(token_bin, seq_len, documents)


class Prefix(Objective):
    name, report_kind, report_targets = "plm", "prefix", "targets after the prefixes"

    def takes_prompts(self, model_config) -> bool:
        return model_config.document_mask

    def windows(self, token_bin, seq_len, masker=None, documents=None, prompt_lengths=None, pair_tokenizer=None):
        return PrefixWindows(token_bin, seq_len, documents, prompt_lengths)


class Masked(Objective):
    """BERT's masked LM; with data.pairs also its next-sentence prediction on sentence pairs."""
    name, report_kind, report_targets = "mlm", "masked", "masked targets"
    causal, masks = False, True

    def takes_pairs(self, model_config) -> bool:
        return model_config.token_types >= 2 and not model_config.document_mask

    def windows(self, token_bin, seq_len, masker=None, documents=None, prompt_lengths=None, pair_tokenizer=None):
        if pair_tokenizer is not None:
            return PairWindows(token_bin, seq_len, masker, pair_tokenizer)
        return MaskedWindows(token_bin, seq_len, masker, documents)

    def run_windows(self, token_bin, seq_len, model_config, data, tokenizer, train, prompt_lengths=None):
        documents = DocumentIndex(token_bin.doc_offsets()) if model_config.document_mask else None
        windows = self.windows(token_bin, seq_len, masker_for(data, tokenizer, eval_mode=not train), documents,
                               pair_tokenizer=tokenizer if data.pairs else None)
        if train and data.whole_word_mask:
            windows.word_starts = WordStarts(token_bin, tokenizer)
        return windows

    def head_fraction(self, mask_rate: float) -> float:
        return mask_rate  # the head is evaluated on the masked positions only

    def sample_loss(self, data) -> Optional[str]:
        return "nsp_loss_sum" if data.pairs else None  # BERT's objective: masked loss plus next-sentence loss

    def eval_metrics(self, loss, targets, correct, bytes_per_token) -> dict:
        return {"val_mlm_accuracy": correct / targets}


OBJECTIVES = {o.name: o for o in (Causal(), Masked(), Prefix())}


def objective_for(model_config) -> Objective:
    """The objective of an LMConfig (its name validated there)."""
    return OBJECTIVES[model_config.objective]
